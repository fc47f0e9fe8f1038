#include "kiln/tokenizer/tokenizer.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/core/parallel.h"
#include "kiln/io/file.h"
#include "kiln/tokenizer/standard_split.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

// ---- Impl ----

namespace {

bool is_space(std::string_view t, size_t i, size_t& len) {
  const uint32_t cp = tok::utf8_decode(t, i, len);
  return cp != 0xFFFFFFFF && tok::char_class(cp) == tok::CharClass::space;
}
// Bytes of whitespace (JavaScript's \s, as Transformers.js trims) that `t` starts with.
size_t leading_space(std::string_view t) {
  size_t i = 0, len = 0;
  while (i < t.size() && is_space(t, i, len)) i += len;
  return i;
}
// Length of `t` without its trailing whitespace.
size_t trimmed_end(std::string_view t) {
  size_t end = 0, len = 0;
  for (size_t i = 0; i < t.size(); i += len)
    if (!is_space(t, i, len)) end = i + len;
  return end;
}
// Hugging Face's single_word: the match at [i, i + n) has no word character (letter, number,
// mark, '_') right before or after it.
bool single_word_at(std::string_view t, size_t i, size_t n) {
  auto word = [&](size_t at) {
    size_t len = 0;
    const uint32_t cp = tok::utf8_decode(t, at, len);
    if (cp == '_') return true;
    const tok::CharClass c = cp == 0xFFFFFFFF ? tok::CharClass::invalid : tok::char_class(cp);
    return c != tok::CharClass::other && c != tok::CharClass::space && c != tok::CharClass::invalid;
  };
  size_t prev = i;  // start of the character before the match
  while (prev > 0 && (uint8_t(t[--prev]) & 0xC0) == 0x80) {
  }
  return !(i > 0 && word(prev)) && !(i + n < t.size() && word(i + n));
}

}  // namespace

void Tokenizer::Impl::finalize() {
  size_t n = sp ? sp->pieces().size() : size_t(bpe.size());
  for (const Added& a : added) {
    KILN_CHECK(a.id >= 0 && !a.text.empty(), "tokenizer", "added token '", a.text, "' with id ",
               a.id, " is invalid: ids are >= 0 and tokens non-empty");
    limits::check_limit("tokenizer", str("added token '", a.text, "'"), "id", a.id,
                        limits::kMaxVocab - 1);
    n = std::max(n, size_t(a.id) + 1);
  }
  id_bytes.assign(n, "");
  is_hole.assign(n, 1);
  if (sp) {
    for (size_t i = 0; i < sp->pieces().size(); ++i) {
      id_bytes[i] = i < decoded.size() ? decoded[i] : sp->piece_bytes(int32_t(i));
      is_hole[i] = 0;
    }
    if (!sp->raw_input() && sp->add_dummy_prefix()) decode_strip = 1;  // the dummy prefix
  } else {
    for (int32_t i = 0; i < bpe.size(); ++i)
      if (!bpe.token(i).empty()) {
        id_bytes[size_t(i)] = bpe.token(i);
        is_hole[size_t(i)] = 0;
      }
  }
  for (auto& list : added_by_first) list.clear();
  for (size_t k = 0; k < added.size(); ++k) {
    const std::string& have = id_bytes[size_t(added[k].id)];
    // (SentencePiece models list their control pieces, <s> </s> <unk>, as added tokens too.)
    KILN_CHECK(sp || is_hole[size_t(added[k].id)] || have == added[k].text, "tokenizer",
               "special token '", added[k].text, "' would take id ", added[k].id,
               ", which is already the token '", have, "': give it a free id");
    id_bytes[size_t(added[k].id)] =
        size_t(added[k].id) < decoded.size() && sp ? decoded[size_t(added[k].id)] : added[k].text;
    is_hole[size_t(added[k].id)] = 0;
    added_by_first[uint8_t(added[k].text[0])].push_back(int32_t(k));
  }
  for (int32_t id : post_prefix)
    KILN_CHECK(size_t(id) < n && !is_hole[size_t(id)], "tokenizer", "post_processor names id ", id,
               ", which is not in the vocabulary (size ", n, "): fix post_processor");
  for (int32_t id : post_suffix)
    KILN_CHECK(size_t(id) < n && !is_hole[size_t(id)], "tokenizer", "post_processor names id ", id,
               ", which is not in the vocabulary (size ", n, "): fix post_processor");
  for (auto& list : added_by_first)  // longest match wins: "<|endoftext|>" over "<|end"
    std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
      return added[size_t(a)].text.size() > added[size_t(b)].text.size();
    });
  if (!eos) {
    for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"})
      for (const Added& a : added)
        if (!eos && a.text == name) eos = a.id;
    if (!eos && sp)
      for (size_t i = 0; i < sp->pieces().size(); ++i)
        if (!eos && sp->pieces()[i].text == "</s>") eos = int32_t(i);
  }
}

void Tokenizer::Impl::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  pre.split(text, pieces);
  if (pre_rest.empty()) return;
  thread_local std::vector<std::string_view> next;
  for (const tok::PreTokenizer& step : pre_rest) {
    next.clear();
    for (std::string_view p : pieces) step.split(p, next);
    pieces.swap(next);
  }
}

size_t Tokenizer::Impl::encode_ordinary(std::string_view text, std::vector<int32_t>& out,
                                        bool first, size_t max_tokens) const {
  if (text.empty()) return 0;
  // Offsets past a normalizer that changed the text are the normalized text's (capped).
  thread_local std::string normalized;
  const std::string_view src =
      normalizer.empty() ? text : normalizer.apply(text, first, normalized);
  if (src.empty()) return text.size();
  if (sp && !sp->raw_input()) return std::min(text.size(), sp->encode(src, out, first, max_tokens));
  if (!sp && bpe.num_merges() == 0 && !bpe.ignore_merges() && !add_prefix_space) {
    // Bytes only (a fresh byte-level vocabulary): no need to pre-tokenize.
    for (size_t i = 0; i < src.size(); ++i) {
      if (out.size() > max_tokens) return std::min(text.size(), i);
      int32_t id = bpe.byte_id(uint8_t(src[i]));
      KILN_CHECK(id >= 0, "tokenizer", "byte 0x", std::hex, int(uint8_t(src[i])),
                 " has no token in this vocabulary");
      out.push_back(id);
    }
    return text.size();
  }
  std::string prefixed;
  const size_t added = add_prefix_space && src[0] != ' ';
  if (added) {
    prefixed.reserve(src.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(src);
  }
  const std::string_view all = added ? std::string_view(prefixed) : src;
  thread_local std::vector<std::string_view> pieces;
  pieces.clear();
  split(all, pieces);
  for (std::string_view piece : pieces) {
    if (sp)
      sp->encode(piece, out, false);
    else
      bpe.encode_piece(piece, out);
    const size_t done = size_t(piece.data() + piece.size() - all.data());
    if (out.size() > max_tokens) return std::min(text.size(), done - std::min(done, added));
  }
  return text.size();
}

Tokenizer make_tokenizer(Tokenizer::Impl impl) {
  impl.finalize();
  return Tokenizer(std::make_unique<Tokenizer::Impl>(std::move(impl)));
}

// ---- Tokenizer ----

Tokenizer::Tokenizer() : Tokenizer(byte_level({})) {}
Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::byte_level(const std::vector<std::string>& specials) {
  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[size_t(b)] = std::string(1, char(b));
  Impl impl;
  impl.bpe = tok::Bpe(std::move(tokens));
  for (const std::string& s : specials) {
    KILN_CHECK(!s.empty(), "tokenizer", "a special token is empty");
    for (const auto& a : impl.added)
      KILN_CHECK(a.text != s, "tokenizer", "special token '", s, "' is given twice");
    impl.added.push_back({s, int32_t(256 + impl.added.size()), true});
  }
  return make_tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::string& path, const LoadOptions& opts) {
  std::string content = read_file(path);
  size_t first = content.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && content[first] == '{')
    return make_tokenizer(load_hf_json(path, content));
  // A rank file's first line is "<base64> <rank>"; anything else is taken for a protobuf.
  size_t eol = content.find('\n');
  std::string_view line = std::string_view(content).substr(0, eol);
  size_t sp = line.find(' ');
  bool rank_line = sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                   line.find_first_not_of(
                       "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") == sp &&
                   line.find_first_not_of("0123456789\r", sp + 1) == std::string_view::npos;
  if (rank_line) return make_tokenizer(load_tiktoken(path, content, opts));
  return make_tokenizer(load_sentencepiece(path, content));
}

void Tokenizer::save(const std::string& path) const {
  write_file_atomic(path, to_hf_json(*impl_));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  return encode_at_most(text, SIZE_MAX, allow_special).ids;
}

Tokenizer::Encoded Tokenizer::encode_at_most(std::string_view text, size_t max_tokens,
                                             bool allow_special) const {
  const Impl& m = *impl_;
  Encoded r;
  std::vector<int32_t>& out = r.ids;
  out.reserve(std::min(text.size(), max_tokens) / 3 + 1);
  if (m.added.empty()) {
    r.bytes = m.encode_ordinary(text, out, true, max_tokens);
    return r;
  }
  // Cut the text at added tokens (leftmost, then longest) and encode the stretches between.
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const auto& cands = m.added_by_first[uint8_t(text[i])];
    const Impl::Added* hit = nullptr;
    for (int32_t k : cands) {
      const Impl::Added& a = m.added[size_t(k)];
      if ((allow_special || !a.special) && text.compare(i, a.text.size(), a.text) == 0 &&
          (!a.single_word || single_word_at(text, i, a.text.size()))) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    const size_t end = hit->lstrip ? start + trimmed_end(text.substr(start, i - start)) : i;
    const std::string_view stretch = text.substr(start, end - start);
    r.bytes = start + m.encode_ordinary(stretch, out, start == 0, max_tokens);
    if (out.size() > max_tokens) return r;
    out.push_back(hit->id);
    i += hit->text.size();
    if (hit->rstrip) i += leading_space(text.substr(i));
    start = i;
    r.bytes = start;
    if (out.size() > max_tokens) return r;
  }
  r.bytes = start + m.encode_ordinary(text.substr(start), out, start == 0, max_tokens);
  return r;
}

std::vector<int32_t> Tokenizer::with_special_tokens(std::vector<int32_t> ids) const {
  const Impl& m = *impl_;
  ids.insert(ids.begin(), m.post_prefix.begin(), m.post_prefix.end());
  ids.insert(ids.end(), m.post_suffix.begin(), m.post_suffix.end());
  return ids;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string_view>& docs,
                                                          bool allow_special) const {
  std::vector<std::vector<int32_t>> out(docs.size());
  parallel_for(int64_t(docs.size()),
               [&](int64_t i) { out[size_t(i)] = encode(docs[size_t(i)], allow_special); });
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  // The decoder's Strip / Metaspace (SentencePiece's dummy prefix): leading spaces of the first
  // token go.
  if (impl_->decode_strip && !ids.empty() && impl_->id_bytes[size_t(ids[0])][0] == ' ') {
    size_t n = 0;
    while (n < impl_->decode_strip && n < out.size() && out[n] == ' ') ++n;
    out.erase(0, n);
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  const Impl& m = *impl_;
  KILN_CHECK(id >= 0 && size_t(id) < m.id_bytes.size() && !m.is_hole[size_t(id)], "tokenizer",
             "token id ", id, " is not in the vocabulary (size ", m.id_bytes.size(), ")");
  return m.id_bytes[size_t(id)];
}

int32_t Tokenizer::vocab_size() const {
  return int32_t(impl_->id_bytes.size());
}

TokenizerInfo Tokenizer::info() const {
  const Impl& m = *impl_;
  TokenizerInfo info;
  info.kind = m.sp ? "sentencepiece" : "bpe";
  info.pattern = m.sp ? "sentencepiece" : pattern_name(m.pre.pattern());
  info.vocab_size = vocab_size();
  info.merges = m.sp ? 0 : int64_t(m.bpe.num_merges());
  for (const auto& a : m.added) info.specials.push_back({a.text, a.id});
  info.eos = m.eos;
  info.pipeline = describe_pipeline(m);
  return info;
}

std::vector<std::string_view> split_at_lines(std::string_view text, size_t bytes) {
  std::vector<std::string_view> docs;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = pos + bytes >= text.size() ? text.size() : text.find('\n', pos + bytes);
    end = end == std::string_view::npos ? text.size() : std::min(text.size(), end + 1);
    docs.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return docs;
}

std::optional<int32_t> Tokenizer::special_id(std::string_view token) const {
  for (const auto& a : impl_->added)
    if (a.text == token) return a.id;
  return std::nullopt;
}

std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->eos;
}

// ---- IncrementalDecoder ----

namespace {
// Length of the longest prefix of `s` that does not end inside an incomplete UTF-8 character.
// Invalid bytes count as complete (they are passed through, never held forever).
size_t complete_prefix(const std::string& s) {
  size_t n = s.size(), j = n;
  while (j > 0 && n - j < 4 && (uint8_t(s[j - 1]) & 0xC0) == 0x80) --j;
  if (j == 0) return n;
  auto lead = uint8_t(s[j - 1]);
  size_t need = lead >= 0xF0 && lead <= 0xF4  ? 4
                : lead >= 0xE0 && lead < 0xF0 ? 3
                : lead >= 0xC2 && lead < 0xE0 ? 2
                                              : 0;
  size_t have = n - (j - 1);
  return need > have ? j - 1 : n;
}
}  // namespace

std::string IncrementalDecoder::push(int32_t id) {
  pending_ += tok_.token_bytes(id);
  size_t cut = complete_prefix(pending_);
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string IncrementalDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace kiln

#include "kiln/tokenizer/sentencepiece.h"

#include <algorithm>
#include <atomic>
#include <queue>

#include "kiln/core/error.h"

namespace kiln::tok {

namespace {
constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁", U+2581

size_t utf8_len(uint8_t lead) {
  return lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
}

// "<0x0A>" -> 10; -1 if not a byte piece.
int byte_of_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  int v = 0;
  for (char c : p.substr(3, 2)) {
    v *= 16;
    if (c >= '0' && c <= '9')
      v += c - '0';
    else if (c >= 'A' && c <= 'F')
      v += c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v += c - 'a' + 10;
    else
      return -1;
  }
  return v;
}
}  // namespace

SentencePiece::SentencePiece(std::vector<Piece> pieces, bool add_dummy_prefix,
                             bool remove_extra_whitespaces, bool byte_fallback)
    : pieces_(std::move(pieces)),
      add_dummy_prefix_(add_dummy_prefix),
      remove_extra_whitespaces_(remove_extra_whitespaces),
      byte_fallback_(byte_fallback) {
  mergeable_.resize(pieces_.size());
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& p = pieces_[i];
    if (p.type == Type::normal || p.type == Type::user_defined) mergeable_[i] = p.text;
    if (p.type == Type::unknown && unk_id_ < 0) unk_id_ = int32_t(i);
    if (p.type == Type::byte) {
      int b = byte_of_piece(p.text);
      KILN_CHECK(b >= 0, "sentencepiece", "byte piece ", i, " '", p.text, "' is not <0xNN>");
      byte_ids_[b] = int32_t(i);
    }
  }
  index_.build(mergeable_);
  // Words may be encoded one by one except where a piece has a "▁" after another character:
  // the character before such a "▁" glues a word to the next.
  split_words_ = true;
  for (const std::string& t : mergeable_) {
    size_t first_other = 0;
    while (t.compare(first_other, kSpace.size(), kSpace) == 0) first_other += kSpace.size();
    for (size_t at = t.find(kSpace, first_other); at != std::string::npos;
         at = t.find(kSpace, at + kSpace.size())) {
      if (at == 0 ||
          (at >= kSpace.size() && t.compare(at - kSpace.size(), kSpace.size(), kSpace) == 0))
        continue;
      size_t c = at - 1;
      while (c > 0 && (uint8_t(t[c]) & 0xC0) == 0x80) --c;
      std::string ch = t.substr(c, at - c);
      if (std::find(glue_.begin(), glue_.end(), ch) == glue_.end()) glue_.push_back(ch);
    }
  }
  if (glue_.size() > 16) split_words_ = false;  // too many: encode the text whole
  static std::atomic<uint64_t> next_owner{1};
  owner_ = next_owner++;
  if (byte_fallback_)
    for (int b = 0; b < 256; ++b)
      KILN_CHECK(byte_ids_[b] >= 0, "sentencepiece",
                 "byte_fallback is on but there is no piece <0x", std::hex, b, ">");
}

size_t SentencePiece::encode(std::string_view text, std::vector<int32_t>& out, bool first,
                             size_t max_tokens) const {
  if (raw_) {
    if (text.empty()) return 0;
    return encode_normalized(text, out, max_tokens);
  }
  // Normalize: optional whitespace cleanup, the dummy prefix, ' ' -> "▁".
  std::string norm;
  norm.reserve(text.size() * 2 + 3);
  if (remove_extra_whitespaces_) {
    size_t b = text.find_first_not_of(' '), e = text.find_last_not_of(' ');
    text = b == std::string_view::npos ? std::string_view() : text.substr(b, e - b + 1);
  }
  if (text.empty()) return 0;
  if (add_dummy_prefix_ && (first || !prefix_first_only_)) norm += kSpace;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == ' ') {
      if (remove_extra_whitespaces_ && i > 0 && text[i - 1] == ' ') continue;
      norm += kSpace;
    } else {
      norm += text[i];
    }
  }

  return encode_normalized(norm, out, max_tokens);
}

size_t SentencePiece::encode_normalized(std::string_view all, std::vector<int32_t>& out,
                                        size_t max_tokens) const {
  if (!split_words_) {
    encode_word(all, out);
    return all.size();
  }
  // Words: a run of "▁" then a run of other characters. No piece spans a word boundary but after
  // a glue character (found at load), so words encode independently, and repeated words come
  // from the cache.
  struct Entry {
    uint64_t owner = 0;
    std::string key;
    std::vector<int32_t> ids;
  };
  constexpr size_t kEntries = 1 << 14;
  thread_local std::vector<Entry> cache(kEntries);
  auto glued = [&](size_t e) {
    for (const std::string& g : glue_)
      if (e >= g.size() && all.compare(e - g.size(), g.size(), g) == 0) return true;
    return false;
  };
  for (size_t pos = 0; pos < all.size();) {
    size_t e = pos;
    while (all.compare(e, kSpace.size(), kSpace) == 0) e += kSpace.size();
    for (;;) {
      while (e < all.size() && all.compare(e, kSpace.size(), kSpace) != 0) ++e;
      if (e == all.size() || !glued(e)) break;
      while (all.compare(e, kSpace.size(), kSpace) == 0) e += kSpace.size();
    }
    std::string_view word = all.substr(pos, e - pos);
    pos = e;
    Entry& entry = cache[hash_bytes(word) & (kEntries - 1)];
    if (entry.owner != owner_ || entry.key != word) {
      entry.owner = owner_;
      entry.key.assign(word);
      entry.ids.clear();
      encode_word(word, entry.ids);
    }
    out.insert(out.end(), entry.ids.begin(), entry.ids.end());
    if (out.size() > max_tokens) return pos;
  }
  return all.size();
}

void SentencePiece::encode_word(std::string_view norm, std::vector<int32_t>& out) const {
  // Symbols are byte ranges of `norm`, starting as characters, in a linked list; candidate merges
  // wait in a heap ordered by score (highest first), then position (leftmost first). A candidate
  // is stale if either symbol's length changed since it was pushed.
  struct Sym {
    int32_t start, len, prev, next;
    int32_t id;  // the piece it is (Hugging Face merges), or -1
  };
  struct Cand {
    float score;
    int32_t left, left_len, right_len, id;
    bool operator<(const Cand& o) const {
      return score != o.score ? score < o.score : left > o.left;
    }
  };
  // Per-thread buffers: a word missing the cache costs no allocation.
  thread_local std::vector<Sym> syms;
  thread_local std::vector<Cand> heap;  // a max-heap (std::push_heap)
  syms.clear();
  heap.clear();
  auto heap_push = [&](const Cand& c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end());
  };
  for (size_t i = 0; i < norm.size();) {
    size_t n = std::min(utf8_len(uint8_t(norm[i])), norm.size() - i);
    syms.push_back(
        Sym{int32_t(i), int32_t(n), int32_t(syms.size()) - 1, int32_t(syms.size()) + 1, -1});
    if (!pair_merges_.empty()) syms.back().id = index_.find(norm.substr(i, n), mergeable_);
    i += n;
  }
  syms.back().next = -1;
  auto push = [&](int32_t l) {
    if (l < 0 || syms[size_t(l)].next < 0) return;
    const Sym& a = syms[size_t(l)];
    const Sym& b = syms[size_t(a.next)];
    if (pair_merges_.empty()) {  // SentencePiece: any pair that makes a piece, by its score
      int32_t id = index_.find(norm.substr(size_t(a.start), size_t(a.len + b.len)), mergeable_);
      if (id >= 0) heap_push(Cand{pieces_[size_t(id)].score, l, a.len, b.len, id});
    } else {  // Hugging Face: only listed merges, by rank
      if (a.id < 0 || b.id < 0) return;
      auto it = pair_merges_.find(uint64_t(uint32_t(a.id)) << 32 | uint32_t(b.id));
      if (it != pair_merges_.end())
        heap_push(Cand{-float(it->second.rank), l, a.len, b.len, it->second.merged});
    }
  };
  for (int32_t i = 0; i + 1 < int32_t(syms.size()); ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const Cand c = heap.back();
    heap.pop_back();
    Sym& a = syms[size_t(c.left)];
    if (a.len != c.left_len || a.next < 0 || syms[size_t(a.next)].len != c.right_len) continue;
    Sym& b = syms[size_t(a.next)];
    a.len += b.len;
    a.id = c.id;
    a.next = b.next;
    if (a.next >= 0) syms[size_t(a.next)].prev = c.left;
    b.len = 0;
    push(a.prev);
    push(c.left);
  }
  bool unk_run = false;  // the last symbol became <unk>
  for (int32_t i = 0; i >= 0; i = syms[size_t(i)].next) {
    std::string_view s = norm.substr(size_t(syms[size_t(i)].start), size_t(syms[size_t(i)].len));
    const int32_t id = syms[size_t(i)].id >= 0 ? syms[size_t(i)].id : index_.find(s, mergeable_);
    if (id >= 0) {
      out.push_back(id);
      unk_run = false;
    } else if (byte_fallback_) {
      for (char ch : s) out.push_back(byte_ids_[uint8_t(ch)]);
      unk_run = false;
    } else {
      KILN_CHECK(unk_id_ >= 0, "sentencepiece", "'", s,
                 "' is not in the vocabulary and the model has neither byte fallback nor <unk>");
      if (!(fuse_unk_ && unk_run)) out.push_back(unk_id_);
      unk_run = true;
      continue;
    }
  }
}

void SentencePiece::set_merges(const std::unordered_map<uint64_t, int32_t>& pair_rank) {
  pair_merges_.clear();
  pair_merges_.reserve(pair_rank.size());
  for (const auto& [pair, rank] : pair_rank) {
    const std::string both =
        pieces_[size_t(pair >> 32)].text + pieces_[size_t(pair & 0xFFFFFFFF)].text;
    const int32_t merged = index_.find(both, mergeable_);
    pair_merges_.emplace(pair, Merge{rank, merged});  // -1: makes a piece that never merges on
  }
}

std::vector<std::pair<uint64_t, int32_t>> SentencePiece::merges() const {
  std::vector<std::pair<uint64_t, int32_t>> out;
  out.reserve(pair_merges_.size());
  for (const auto& [pair, m] : pair_merges_) out.emplace_back(pair, m.rank);
  return out;
}

std::string SentencePiece::piece_bytes(int32_t id) const {
  const Piece& p = pieces_[size_t(id)];
  switch (p.type) {
    case Type::control:
      return "";
    case Type::unknown:
      return " \xE2\x81\x87 ";  // " ⁇ ", SentencePiece's surface for <unk>
    case Type::byte:
      return std::string(1, char(byte_of_piece(p.text)));
    default: {
      std::string out;
      for (size_t i = 0; i < p.text.size();) {
        if (p.text.compare(i, kSpace.size(), kSpace) == 0) {
          out += ' ';
          i += kSpace.size();
        } else {
          out += p.text[i++];
        }
      }
      return out;
    }
  }
}

}  // namespace kiln::tok

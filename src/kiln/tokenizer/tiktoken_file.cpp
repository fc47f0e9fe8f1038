// tiktoken rank files: one "<base64 token bytes> <rank>" per line; the rank is the token id and
// the merge priority. The file has no pattern or special tokens: those come from the encoding's
// name in the file name (tiktoken's openai_public.py), or Llama 3's when the file has 128000 ranks
// (its tokenizer.model), or the caller's options.
#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    int v = base64_value(in[i]);
    if (v < 0) return false;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xFF);
    }
  }
  for (; i < in.size(); ++i)
    if (in[i] != '=') return false;
  return !out.empty();
}

struct Encoding {
  tok::Pattern pattern;
  std::vector<std::pair<std::string, int32_t>> specials;
};

// The standard encodings, recognised by name (tiktoken_ext/openai_public.py; Meta's llama3).
std::optional<Encoding> standard_encoding(const std::string& path, size_t num_ranks) {
  std::string name = std::filesystem::path(path).filename().string();
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("r50k") || has("p50k") || has("gpt2"))
    return Encoding{tok::Pattern::gpt2, {{"<|endoftext|>", 50256}}};
  if (has("cl100k"))
    return Encoding{tok::Pattern::cl100k,
                    {{"<|endoftext|>", 100257},
                     {"<|fim_prefix|>", 100258},
                     {"<|fim_middle|>", 100259},
                     {"<|fim_suffix|>", 100260},
                     {"<|endofprompt|>", 100276}}};
  if (has("o200k"))
    return Encoding{tok::Pattern::o200k, {{"<|endoftext|>", 199999}, {"<|endofprompt|>", 200018}}};
  if (has("llama3") || has("llama-3") || num_ranks == 128000) {
    // Llama 3.1's names; 256 specials from 128000.
    std::vector<std::string> names = {"<|begin_of_text|>",
                                      "<|end_of_text|>",
                                      "<|reserved_special_token_0|>",
                                      "<|reserved_special_token_1|>",
                                      "<|finetune_right_pad_id|>",
                                      "<|reserved_special_token_2|>",
                                      "<|start_header_id|>",
                                      "<|end_header_id|>",
                                      "<|eom_id|>",
                                      "<|eot_id|>",
                                      "<|python_tag|>"};
    for (int i = 3; names.size() < 256; ++i)
      names.push_back(str("<|reserved_special_token_", i, "|>"));
    Encoding e{tok::Pattern::llama3, {}};
    for (size_t i = 0; i < names.size(); ++i)
      e.specials.push_back({names[i], int32_t(num_ranks + i)});
    return e;
  }
  return std::nullopt;
}

}  // namespace

Tokenizer::Impl load_tiktoken(const std::string& path, const std::string& content,
                              const LoadOptions& opts) {
  std::vector<std::string> tokens;
  std::string bytes;
  size_t line_no = 0, num_ranks = 0;
  for (size_t pos = 0; pos < content.size();) {
    size_t eol = content.find('\n', pos);
    if (eol == std::string::npos) eol = content.size();
    std::string_view line = std::string_view(content).substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    KILN_CHECK(sp != std::string_view::npos, "tokenizer", path, ":", line_no,
               ": expected '<base64 token> <rank>', got '", line.substr(0, 80), "'");
    KILN_CHECK(base64_decode(line.substr(0, sp), bytes), "tokenizer", path, ":", line_no, ": '",
               line.substr(0, sp), "' is not base64 of a non-empty token");
    std::string_view rank_s = line.substr(sp + 1);
    int64_t rank = 0;
    KILN_CHECK(!rank_s.empty() && rank_s.size() <= 18 &&
                   rank_s.find_first_not_of("0123456789") == std::string_view::npos,
               "tokenizer", path, ":", line_no, ": rank '", rank_s,
               "' is not a number of at most 18 digits");
    for (char c : rank_s) rank = rank * 10 + (c - '0');
    // The rank is the token's id: checked before it sizes the token table.
    limits::check_limit("tokenizer", str(path, ":", line_no), "rank", rank, limits::kMaxVocab - 1);
    if (size_t(rank) >= tokens.size()) tokens.resize(size_t(rank) + 1);
    KILN_CHECK(tokens[size_t(rank)].empty(), "tokenizer", path, ":", line_no, ": rank ", rank,
               " is given twice");
    tokens[size_t(rank)] = bytes;
    ++num_ranks;
  }
  KILN_CHECK(num_ranks > 0, "tokenizer", path, ": no ranks in the file");
  Tokenizer::Impl impl;
  impl.bpe = tok::Bpe(std::move(tokens));
  for (int b = 0; b < 256; ++b)
    KILN_CHECK(impl.bpe.byte_id(uint8_t(b)) >= 0, "tokenizer", path, ": byte 0x", std::hex, b,
               " has no rank: a tiktoken file must rank all 256 single bytes");
  impl.bpe.merges_from_ranks();
  impl.bpe.set_ignore_merges(true);

  std::optional<Encoding> enc = standard_encoding(path, num_ranks);
  tok::Pattern pattern = enc ? enc->pattern : tok::Pattern::none;
  if (opts.pattern) pattern = *opts.pattern;
  KILN_CHECK(pattern != tok::Pattern::none || opts.pattern, "tokenizer", path,
             ": a .tiktoken file does not say its split pattern and the name is not a standard "
             "encoding (r50k, p50k, cl100k, o200k, llama3): give the pattern (--pattern)");
  impl.pre = tok::PreTokenizer(pattern);
  if (enc && opts.specials.empty())
    for (const auto& [text, id] : enc->specials) impl.added.push_back({text, id, true});
  for (const auto& [text, id] : opts.specials) impl.added.push_back({text, id, true});
  return impl;
}

}  // namespace kiln

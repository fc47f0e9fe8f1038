// Text primitives shared by the curation steps: the 64-bit hash, the word tokenizer every filter
// and MinHash use, character counts in code points, and normalization (NFC, control characters,
// whitespace). All functions take valid UTF-8 (the JSONL reader guarantees it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::curate {

// A fast 64-bit hash of bytes (wyhash-style multiply-mix). Used for exact dedup, word and n-gram
// hashes; not cryptographic.
uint64_t hash64(const void* data, size_t n, uint64_t seed = 0);
inline uint64_t hash64(std::string_view s, uint64_t seed = 0) {
  return hash64(s.data(), s.size(), seed);
}
// Mixes two hashes (order matters): for n-gram hashes built from word hashes.
inline uint64_t hash_combine(uint64_t h, uint64_t x) {
  __uint128_t m = __uint128_t(h ^ 0x9E3779B97F4A7C15ull) * (x ^ 0xC2B2AE3D27D4EB4Full);
  return uint64_t(m) ^ uint64_t(m >> 64);
}

// Characters (Unicode code points) in valid UTF-8: what Python's len() counts.
inline size_t char_count(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// True for ASCII punctuation, Python's string.punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
inline bool is_ascii_punct(unsigned char c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
         (c >= 123 && c <= 126);
}
// Whitespace that separates words: space, \t, \n, \r, \v, \f.
inline bool is_space(unsigned char c) {
  return c == ' ' || (c >= 9 && c <= 13);
}

// The word tokenizer (an approximation of nltk's word_tokenize for English, which datatrove's
// filters use): split on whitespace, then split each leading and trailing ASCII punctuation
// character off as a token of its own: "(Hello)," -> "(", "Hello", ")", ",". Inner punctuation
// stays ("don't", "U.S", "3.14"). A token is punctuation when it is one ASCII punctuation
// character.
void split_words(std::string_view text, std::vector<std::string_view>& words);
// split_words(text).size(), without storing the words.
size_t count_words(std::string_view text);

// One document's split_words, computed on first use and shared by the filters that read the same
// text; whoever rewrites the text calls invalidate().
class WordCache {
 public:
  const std::vector<std::string_view>& of(std::string_view text) {
    if (!valid_) split_words(text, words_), valid_ = true;
    return words_;
  }
  void invalidate() { valid_ = false; }

 private:
  std::vector<std::string_view> words_;
  bool valid_ = false;
};
inline bool is_punct_token(std::string_view w) {
  return w.size() == 1 && is_ascii_punct(static_cast<unsigned char>(w[0]));
}
// Python's str.splitlines() for text whose only line break is "\n": a final "\n" makes no empty
// last line, and "" has no lines.
void split_lines(std::string_view text, std::vector<std::string_view>& lines);
// Python's str.split("\n"): n+1 pieces for n newlines.
void split_on_newline(std::string_view text, std::vector<std::string_view>& lines);
// Python's str.strip() / lstrip() / rstrip() for ASCII whitespace.
std::string_view strip(std::string_view s);
std::string_view lstrip(std::string_view s);
std::string_view rstrip(std::string_view s);
// True if `w` contains a letter (Unicode category L*), like any(c.isalpha() for c in w).
bool has_alpha(std::string_view w);
// Occurrences of `needle` in `s`, non-overlapping, like Python's str.count.
size_t count_substr(std::string_view s, std::string_view needle);

struct NormalizeConfig {
  bool nfc = true;             // Unicode NFC (utf8proc)
  bool remove_control = true;  // drop category Cc except \n and \t; "\r\n" and "\r" become "\n"
  bool whitespace = true;      // see normalize_text
};

// Normalizes in this order: NFC; control characters; whitespace: Unicode space separators (Zs,
// e.g. U+00A0) become ' ', runs of spaces become one, spaces and tabs at the end of a line are
// dropped, three or more newlines become two (a paragraph break), and the text is trimmed.
// Pure ASCII text skips NFC (it is already NFC). Returns the normalized text.
std::string normalize_text(std::string_view text, const NormalizeConfig& cfg);

}  // namespace kiln::curate

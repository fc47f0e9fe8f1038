// Pre-tokenizers: the regex that cuts text into pieces before BPE, for each standard encoding.
// Patterns are tiktoken's / Hugging Face's, run by PCRE2 (Unicode properties, JIT). `\s` means
// JavaScript's and ECMAScript's whitespace (what gpt-tokenizer and llama3-tokenizer-js, the
// oracles, use): it includes U+FEFF and excludes U+0085 and U+180E, unlike PCRE2's own \s.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/pattern.h"

namespace kiln::tok {

using kiln::Pattern;

class PreTokenizer {
 public:
  PreTokenizer();
  // For Pattern::custom, `regex` is the expression; otherwise it is ignored. The standard
  // patterns run on the hand-written splitter (standard_split.h) unless `force_regex`.
  explicit PreTokenizer(Pattern p, const std::string& regex = "", bool force_regex = false);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  Pattern pattern() const { return pattern_; }
  const std::string& regex() const { return regex_; }

  // Appends the pieces of `text` (views into it) in order; together they cover `text` exactly.
  // Bytes the pattern cannot match (invalid UTF-8, gaps of a custom regex) become pieces too.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  struct Regex;
  Pattern pattern_ = Pattern::none;
  std::string regex_;
  bool fast_ = false;                // split_standard instead of the regex
  std::shared_ptr<const Regex> re_;  // compiled once, shared by copies; matching is thread-safe
};

}  // namespace kiln::tok

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

// What a Split does with the pattern's matches (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

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
  // Hugging Face Split: what becomes of the matches (default: isolated), and `invert` (the
  // matches are the content and the text between them the delimiters).
  void set_behavior(SplitBehavior b, bool invert);
  SplitBehavior behavior() const { return behavior_; }
  bool invert() const { return invert_; }

  // Appends the pieces of `text` (views into it) in order; together they cover `text` exactly.
  // Bytes the pattern cannot match (invalid UTF-8, gaps of a custom regex) become pieces too.
  // With a behavior other than isolated, or invert, pieces may be dropped (removed) or merged.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;

 private:
  // Appends the spans of `text`: matches (flag true) and the gaps between them (false).
  void spans(std::string_view text, std::vector<std::pair<std::string_view, bool>>& out) const;

  struct Regex;
  Pattern pattern_ = Pattern::none;
  std::string regex_;
  bool fast_ = false;  // split_standard instead of the regex
  SplitBehavior behavior_ = SplitBehavior::isolated;
  bool invert_ = false;
  std::shared_ptr<const Regex> re_;  // compiled once, shared by copies; matching is thread-safe
};

}  // namespace kiln::tok

// Heuristic quality filters with the published defaults, each threshold overridable. The rules
// and reason names follow datatrove's implementations (huggingface/datatrove,
// pipeline/filters/{gopher_quality,gopher_repetition,c4,fineweb_quality}_filter.py), which cite
// Gopher (Rae et al. 2021, table A1), C4 (Raffel et al. 2020) and FineWeb (Penedo et al. 2024).
// Differences from datatrove, all deliberate: words come from curate::split_words (not nltk), C4
// counts sentences by terminal punctuation (not nltk's punkt), and the duplicate n-gram fraction
// scans words (datatrove's find_all_duplicate is handed n-grams instead of words, a bug).
// Lengths are in characters (code points), as Python's len() counts them. A Gopher threshold <= 0
// disables its rule (as None does in datatrove); a FineWeb or C4 count threshold < 0 does. Cost:
// linear in the text, one pass per rule.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kiln::curate {

// keep == false means the document is dropped; `reason` then names the rule (a static string).
struct FilterResult {
  bool keep = true;
  const char* reason = "";
  bool rewrote = false;  // the filter changed the text (C4 drops lines)
};

// Filters that read words take the document's split_words(text) when the caller has it (the
// pipeline splits each text once for all of them); null splits here.
using Words = std::vector<std::string_view>;

struct GopherQualityConfig {
  int min_doc_words = 50, max_doc_words = 100000;
  double min_avg_word_length = 3, max_avg_word_length = 10;
  double max_symbol_word_ratio = 0.1;     // '#' and '...'/'…' per word
  double max_bullet_lines_ratio = 0.9;    // lines starting with a bullet
  double max_ellipsis_lines_ratio = 0.3;  // lines ending with '...' or '…'
  double max_non_alpha_words_ratio =
      0.8;  // named as in datatrove: the MIN share of words with a letter
  int min_stop_words = 2;
  std::vector<std::string> stop_words = {"the", "be", "to", "of", "and", "that", "have", "with"};
  std::vector<std::string> bullets = {"\u2022"};  // "•", as datatrove
};
FilterResult gopher_quality(const std::string& text, const GopherQualityConfig& cfg,
                            const Words* words = nullptr);

struct NgramThreshold {
  int n;
  double max_fraction;
};
struct GopherRepetitionConfig {
  double dup_line_frac = 0.3, dup_para_frac = 0.3;
  double dup_line_char_frac = 0.2, dup_para_char_frac = 0.2;
  std::vector<NgramThreshold> top_n_grams = {{2, 0.2}, {3, 0.18}, {4, 0.16}};
  std::vector<NgramThreshold> dup_n_grams = {{5, 0.15}, {6, 0.14}, {7, 0.13},
                                             {8, 0.12}, {9, 0.11}, {10, 0.10}};
};
FilterResult gopher_repetition(const std::string& text, const GopherRepetitionConfig& cfg,
                               const Words* words = nullptr);

struct C4Config {
  bool remove_citations = true;          // "[1]", "[edit]", "[citation needed]"
  bool filter_no_terminal_punct = true;  // drop lines not ending in . ? ! " ' (or ending in ...)
  int min_num_sentences = 5;             // after line filtering; -1 disables
  int min_words_per_line = 3;            // drop shorter lines; -1 disables
  int max_word_length = 1000;            // drop lines with a longer word; -1 disables
  bool filter_lorem_ipsum = true;        // drop the document
  bool filter_javascript = true;         // drop the line
  bool filter_curly_bracket = true;      // drop the document
  bool filter_policy = true;             // drop lines with cookie / terms-of-use phrases
};
// C4 also rewrites the text: kept lines (stripped, citations removed) joined by "\n".
FilterResult c4_quality(std::string& text, const C4Config& cfg);
// Sentences in a line: runs of '.', '!' or '?' followed by whitespace or the end (at least 1).
int count_sentences(std::string_view line);

struct FineWebConfig {
  double line_punct_thr = 0.12;
  bool line_punct_exclude_zero = false;
  double short_line_thr = 0.67;
  int short_line_length = 30;
  double char_duplicates_ratio = 0.01;
  double new_line_ratio = 0.3;
};
FilterResult fineweb_quality(const std::string& text, const FineWebConfig& cfg,
                             const Words* words = nullptr);

}  // namespace kiln::curate

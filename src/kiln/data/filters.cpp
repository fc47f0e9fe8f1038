#include "kiln/data/filters.h"

#include <algorithm>
#include <array>
#include <string_view>

#include "kiln/data/curate_text.h"

namespace kiln::curate {
namespace {

bool starts_with(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p;
}
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}
bool on(double threshold) {
  return threshold > 0;
}

// An open-addressing hash table from 64-bit keys to (count, first index), reused across documents
// by one thread: a set and a Counter for n-grams without allocating per document.
class NgramTable {
 public:
  void reset(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    if (slots_.size() < cap) slots_.resize(cap);
    mask_ = cap - 1;
    for (size_t i = 0; i < cap; ++i) slots_[i].key = 0;
  }
  struct Slot {
    uint64_t key;
    uint32_t count, first;
  };
  // The slot for `key`, inserted with count 0 if absent.
  Slot& get(uint64_t key, uint32_t index) {
    key |= 1;  // 0 marks an empty slot; one bit of hash is a fair price
    size_t i = key & mask_;
    while (slots_[i].key != 0 && slots_[i].key != key) i = (i + 1) & mask_;
    if (slots_[i].key == 0) slots_[i] = {key, 0, index};
    return slots_[i];
  }

 private:
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

struct Scratch {
  std::vector<std::string_view> words, lines, items;
  std::vector<uint64_t> word_hash, ngram_hash;
  std::vector<size_t> char_prefix;  // char_prefix[i] = chars in words[0, i)
  NgramTable table;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// datatrove's find_duplicates: elements seen before, and their characters.
std::pair<size_t, size_t> find_duplicates(const std::vector<std::string_view>& items,
                                          NgramTable& t) {
  t.reset(items.size());
  size_t dup = 0, chars = 0;
  for (uint32_t i = 0; i < items.size(); ++i) {
    auto& slot = t.get(hash64(items[i]), i);
    if (slot.count++ > 0) ++dup, chars += char_count(items[i]);
  }
  return {dup, chars};
}

const char* ngram_reason(const char* kind, int n) {
  static const auto names = [] {
    std::array<std::array<std::string, 33>, 2> r;
    for (int k = 0; k < 33; ++k) {
      r[0][k] = "top_" + std::to_string(k) + "_gram";
      r[1][k] = "duplicated_" + std::to_string(k) + "_n_grams";
    }
    return r;
  }();
  int which = kind[0] == 't' ? 0 : 1;
  return n >= 0 && n < 33 ? names[which][n].c_str() : (which ? "duplicated_n_grams" : "top_n_gram");
}

}  // namespace

FilterResult gopher_quality(const std::string& text, const GopherQualityConfig& cfg,
                            const Words* words) {
  Scratch& s = scratch();
  if (!words) split_words(text, s.words), words = &s.words;
  size_t n_words = 0, word_chars = 0, alpha = 0, stop = 0;
  // Only "fewer than min_stop_words" matters, so counting stops once there are enough.
  const size_t stop_needed = size_t(std::max(cfg.min_stop_words, 0));
  for (auto w : *words) {
    if (!is_punct_token(w)) ++n_words, word_chars += char_count(w);
    alpha += has_alpha(w);
    if (stop < stop_needed)
      for (auto& sw : cfg.stop_words) stop += w == sw;
  }
  if (n_words == 0 || (cfg.min_doc_words > 0 && n_words < size_t(cfg.min_doc_words)))
    return {false, "gopher_short_doc"};
  if (cfg.max_doc_words > 0 && n_words > size_t(cfg.max_doc_words))
    return {false, "gopher_long_doc"};
  double avg = double(word_chars) / double(n_words);
  if (on(cfg.min_avg_word_length) && avg < cfg.min_avg_word_length)
    return {false, "gopher_below_avg_threshold"};
  if (on(cfg.max_avg_word_length) && avg > cfg.max_avg_word_length)
    return {false, "gopher_above_avg_threshold"};
  if (on(cfg.max_symbol_word_ratio)) {
    if (double(count_substr(text, "#")) / double(n_words) > cfg.max_symbol_word_ratio)
      return {false, "gopher_too_many_hashes"};
    size_t ell = count_substr(text, "...") + count_substr(text, "\u2026");
    if (double(ell) / double(n_words) > cfg.max_symbol_word_ratio)
      return {false, "gopher_too_many_ellipsis"};
  }
  split_lines(text, s.lines);
  double n_lines = double(s.lines.size());
  if (on(cfg.max_bullet_lines_ratio)) {
    size_t bullets = 0;
    for (auto line : s.lines) {
      auto l = lstrip(line);
      for (auto& b : cfg.bullets)
        if (starts_with(l, b)) {
          ++bullets;
          break;
        }
    }
    if (double(bullets) / n_lines > cfg.max_bullet_lines_ratio)
      return {false, "gopher_too_many_bullets"};
  }
  if (on(cfg.max_ellipsis_lines_ratio)) {
    size_t ell = 0;
    for (auto line : s.lines) {
      auto l = rstrip(line);
      ell += ends_with(l, "...") || ends_with(l, "\u2026");
    }
    if (double(ell) / n_lines > cfg.max_ellipsis_lines_ratio)
      return {false, "gopher_too_many_end_ellipsis"};
  }
  if (on(cfg.max_non_alpha_words_ratio) &&
      double(alpha) / double(n_words) < cfg.max_non_alpha_words_ratio)
    return {false, "gopher_below_alpha_threshold"};
  if (cfg.min_stop_words > 0 && stop < size_t(cfg.min_stop_words))
    return {false, "gopher_enough_stop_words"};
  return {};
}

FilterResult gopher_repetition(const std::string& text, const GopherRepetitionConfig& cfg,
                               const Words* words) {
  Scratch& s = scratch();
  double text_chars = double(char_count(text));
  if (text_chars == 0) return {};  // nothing can repeat (datatrove divides by zero here)

  // Paragraphs: the stripped text split on runs of two or more newlines.
  std::string_view body = strip(text);
  s.items.clear();
  for (size_t start = 0;;) {
    size_t p = body.find("\n\n", start);
    if (p == std::string_view::npos) {
      s.items.push_back(body.substr(start));
      break;
    }
    s.items.push_back(body.substr(start, p - start));
    start = p;
    while (start < body.size() && body[start] == '\n') ++start;
  }
  auto [para_dup, para_chars] = find_duplicates(s.items, s.table);
  if (on(cfg.dup_para_frac) && double(para_dup) / double(s.items.size()) > cfg.dup_para_frac)
    return {false, "dup_para_frac"};
  if (on(cfg.dup_para_char_frac) && double(para_chars) / text_chars > cfg.dup_para_char_frac)
    return {false, "dup_para_char_frac"};

  split_lines(text, s.lines);
  auto [line_dup, line_chars] = find_duplicates(s.lines, s.table);
  if (on(cfg.dup_line_frac) && double(line_dup) / double(s.lines.size()) > cfg.dup_line_frac)
    return {false, "dup_line_frac"};
  if (on(cfg.dup_line_char_frac) && double(line_chars) / text_chars > cfg.dup_line_char_frac)
    return {false, "dup_line_char_frac"};

  if (!words) split_words(text, s.words), words = &s.words;
  size_t W = words->size();
  s.word_hash.resize(W);
  s.char_prefix.resize(W + 1);
  s.char_prefix[0] = 0;
  for (size_t i = 0; i < W; ++i) {
    s.word_hash[i] = hash64((*words)[i]);
    s.char_prefix[i + 1] = s.char_prefix[i] + char_count((*words)[i]);
  }
  // Characters of the n-gram at i: its words joined by single spaces.
  auto ngram_chars = [&](size_t i, int n) {
    return s.char_prefix[i + n] - s.char_prefix[i] + (n - 1);
  };
  // ngram_hash[i] holds the hash of the cur_n-gram at i; a larger n extends it one word at a time,
  // so the usual ascending n (2, 3, 4, 5, ..., 10) costs one combine per word per n.
  int cur_n = 0;
  auto hashes_for = [&](int n) {
    if (n < cur_n || cur_n == 0)
      s.ngram_hash.assign(s.word_hash.begin(), s.word_hash.end()), cur_n = 1;
    for (int k = cur_n; k < n; ++k)
      for (size_t i = 0; i + k < W; ++i)
        s.ngram_hash[i] = hash_combine(s.ngram_hash[i], s.word_hash[i + k]);
    cur_n = n;
  };

  for (auto [n, frac] : cfg.top_n_grams) {
    if (n < 1 || W < size_t(n) || !on(frac)) continue;
    hashes_for(n);
    size_t count = W - n + 1;
    s.table.reset(count);
    uint32_t best = 0, best_first = 0;
    for (uint32_t i = 0; i < count; ++i) {
      auto& slot = s.table.get(s.ngram_hash[i], i);
      ++slot.count;
      // Counter.most_common(1): the highest count, ties to the n-gram seen first.
      if (slot.count > best || (slot.count == best && slot.first < best_first))
        best = slot.count, best_first = slot.first;
    }
    if (double(ngram_chars(best_first, n) * best) / text_chars > frac)
      return {false, ngram_reason("top", n)};
  }

  // If no n-gram repeats, no longer one can (each contains a repeated n-gram as its prefix), so
  // the larger n are known to be 0 without a pass (exact, in whatever order n is listed).
  int none_from = 0;
  for (auto [n, frac] : cfg.dup_n_grams) {
    if (n < 1 || W < size_t(n) || !on(frac)) continue;
    if (none_from > 0 && n >= none_from) continue;
    hashes_for(n);
    size_t count = W - n + 1;
    s.table.reset(count);
    size_t repeated = 0;
    // datatrove's find_all_duplicate over words: a repeated n-gram counts its characters and the
    // scan jumps past it, so overlapping repeats are not counted twice.
    for (size_t i = 0; i < count;) {
      auto& slot = s.table.get(s.ngram_hash[i], uint32_t(i));
      if (slot.count++ > 0) {
        repeated += ngram_chars(i, n);
        i += size_t(n);
      } else {
        ++i;
      }
    }
    if (double(repeated) / text_chars > frac) return {false, ngram_reason("dup", n)};
    if (repeated == 0) none_from = n;
  }
  return {};
}

int count_sentences(std::string_view line) {
  int count = 0;
  bool pending = false;  // visible text since the last sentence end
  for (size_t i = 0; i < line.size();) {
    char c = line[i];
    if (c == '.' || c == '!' || c == '?') {
      size_t j = i;
      while (j < line.size() && (line[j] == '.' || line[j] == '!' || line[j] == '?')) ++j;
      if (j == line.size() || is_space(static_cast<unsigned char>(line[j]))) {
        ++count;
        pending = false;
      } else {
        pending = true;
      }
      i = j;
      continue;
    }
    if (!is_space(static_cast<unsigned char>(c))) pending = true;
    ++i;
  }
  return count + (pending ? 1 : 0);
}

namespace {

// Removes "[digits]", "[edit]" and "[citation needed]" (C4's CITATION_REGEX).
std::string remove_citations(std::string_view line) {
  std::string out;
  out.reserve(line.size());
  for (size_t i = 0; i < line.size();) {
    if (line[i] == '[') {
      size_t j = i + 1;
      while (j < line.size() && line[j] >= '0' && line[j] <= '9') ++j;
      if (j < line.size() && line[j] == ']') {
        i = j + 1;
        continue;
      }
      auto rest = line.substr(i);
      if (starts_with(rest, "[edit]")) {
        i += 6;
        continue;
      }
      if (starts_with(rest, "[citation needed]")) {
        i += 17;
        continue;
      }
    }
    out += line[i++];
  }
  return out;
}

constexpr std::array<std::string_view, 6> kPolicy = {"terms of use",   "privacy policy",
                                                     "cookie policy",  "uses cookies",
                                                     "use of cookies", "use cookies"};

}  // namespace

FilterResult c4_quality(std::string& text, const C4Config& cfg) {
  Scratch& s = scratch();
  split_lines(text, s.lines);
  std::string kept, cited, lower;
  int sentences = 0, n_kept = 0;
  for (auto raw : s.lines) {
    std::string_view stripped = strip(raw);
    // line.split(): whitespace-separated words, punctuation attached.
    size_t n_words = 0;
    bool long_word = false;
    for (size_t i = 0; i < stripped.size();) {
      while (i < stripped.size() && is_space(static_cast<unsigned char>(stripped[i]))) ++i;
      size_t b = i;
      while (i < stripped.size() && !is_space(static_cast<unsigned char>(stripped[i]))) ++i;
      if (i > b) {
        ++n_words;
        // A word has at most as many characters as bytes: count only the long ones.
        if (cfg.max_word_length != -1 && i - b > size_t(cfg.max_word_length) &&
            char_count(stripped.substr(b, i - b)) > size_t(cfg.max_word_length))
          long_word = true;
      }
    }
    if (long_word) continue;
    std::string_view line = stripped;
    if (cfg.remove_citations && line.find('[') != std::string_view::npos) {
      cited = remove_citations(stripped);
      line = cited;
    }
    if (cfg.filter_no_terminal_punct) {
      char last = line.empty() ? 0 : line.back();
      bool terminal = last == '.' || last == '?' || last == '!' || last == '"' || last == '\'';
      if (!terminal || ends_with(line, "...")) continue;
    }
    if (int64_t(n_words) < cfg.min_words_per_line) continue;
    lower.assign(line);
    for (char& c : lower)
      if (c >= 'A' && c <= 'Z') c = char(c + 32);
    if (cfg.filter_lorem_ipsum && lower.find("lorem ipsum") != std::string::npos)
      return {false, "lorem_ipsum"};
    if (cfg.filter_javascript && lower.find("javascript") != std::string::npos) continue;
    if (cfg.filter_curly_bracket && line.find('{') != std::string_view::npos)
      return {false, "curly_bracket"};
    // Every policy phrase contains "cookie", "polic" or "terms of use": look for those first.
    if (cfg.filter_policy &&
        (lower.find("cookie") != std::string::npos || lower.find("polic") != std::string::npos ||
         lower.find("terms of use") != std::string::npos)) {
      bool policy = false;
      for (auto p : kPolicy) policy |= lower.find(p) != std::string::npos;
      if (policy) continue;
    }
    sentences += count_sentences(line);
    if (n_kept++ > 0) kept += '\n';
    kept += line;
  }
  if (sentences < cfg.min_num_sentences) return {false, "too_few_sentences"};
  FilterResult r;
  if (std::string_view stripped = strip(kept); stripped != text) {
    text = std::string(stripped);
    r.rewrote = true;
  }
  return r;
}

FilterResult fineweb_quality(const std::string& text, const FineWebConfig& cfg,
                             const Words* words) {
  Scratch& s = scratch();
  split_on_newline(text, s.lines);
  double n_lines = double(s.lines.size());
  if (cfg.line_punct_thr >= 0) {
    size_t punct = 0;
    for (auto l : s.lines) {
      char c = l.empty() ? 0 : l.back();
      punct += c == '.' || c == '\'' || c == '"' || c == '!' || c == '?';
    }
    double ratio = double(punct) / n_lines;
    if (ratio <= cfg.line_punct_thr && !(ratio == 0 && cfg.line_punct_exclude_zero))
      return {false, "line_punct_ratio"};
  }
  if (cfg.short_line_thr >= 0) {
    size_t short_lines = 0;
    for (auto l : s.lines) short_lines += char_count(l) <= size_t(cfg.short_line_length);
    if (double(short_lines) / n_lines >= cfg.short_line_thr) return {false, "short_line_ratio"};
  }
  if (cfg.char_duplicates_ratio >= 0) {
    s.items.clear();
    for (auto l : s.lines)
      if (!strip(l).empty()) s.items.push_back(l);
    size_t dup_chars = find_duplicates(s.items, s.table).second;
    size_t chars = char_count(text) - count_substr(text, "\n");
    if (chars == 0 || double(dup_chars) / double(chars) >= cfg.char_duplicates_ratio)
      return {false, "char_dup_ratio"};
  }
  if (cfg.new_line_ratio >= 0) {
    size_t n_words = words ? words->size() : count_words(text);
    size_t newlines = count_substr(text, "\n");
    if (n_words == 0 || double(newlines) / double(n_words) > cfg.new_line_ratio)
      return {false, "list_ratio"};
  }
  return {};
}

}  // namespace kiln::curate

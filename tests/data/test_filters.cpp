// Every filter decision equals a direct, separate implementation of the published rule
// (datatrove's Python, transcribed with std::string, std::map and std::istringstream), on
// generated documents whose knobs sit on both sides of every threshold.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <sstream>

#include "kiln/data/curate_text.h"
#include "kiln/data/filters.h"

using namespace kiln::curate;

namespace {

// ---- the oracle: Python semantics, spelled out -------------------------------------------------
const std::string kPunct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
bool punct(char c) {
  return kPunct.find(c) != std::string::npos;
}
size_t len(const std::string& s) {  // Python len(): code points
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}
std::vector<std::string> ws_split(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> r;
  for (std::string w; in >> w;) r.push_back(w);
  return r;
}
// The documented tokenizer: whitespace split, edge punctuation split off one character each.
std::vector<std::string> tokens(const std::string& s) {
  std::vector<std::string> r;
  for (const std::string& w : ws_split(s)) {
    size_t b = 0, e = w.size();
    while (b < e && punct(w[b])) r.push_back(std::string(1, w[b++]));
    size_t ce = e;
    while (ce > b && punct(w[ce - 1])) --ce;
    if (ce > b) r.push_back(w.substr(b, ce - b));
    for (size_t k = ce; k < e; ++k) r.push_back(std::string(1, w[k]));
  }
  return r;
}
std::vector<std::string> split_str(const std::string& s, char sep) {
  std::vector<std::string> r;
  std::string cur;
  for (char c : s) {
    if (c == sep)
      r.push_back(cur), cur.clear();
    else
      cur += c;
  }
  r.push_back(cur);
  return r;
}
std::vector<std::string> splitlines(const std::string& s) {
  if (s.empty()) return {};
  auto r = split_str(s, '\n');
  if (s.back() == '\n') r.pop_back();
  return r;
}
std::string py_strip(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n\r\v\f");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\n\r\v\f") - b + 1);
}
bool endswith(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}
size_t count(const std::string& s, const std::string& n) {
  size_t c = 0;
  for (size_t p = s.find(n); p != std::string::npos; p = s.find(n, p + n.size())) ++c;
  return c;
}
std::pair<size_t, size_t> find_duplicates(const std::vector<std::string>& x) {
  std::set<std::string> seen;
  size_t d = 0, ch = 0;
  for (auto& e : x)
    if (!seen.insert(e).second) ++d, ch += len(e);
  return {d, ch};
}
std::string join(const std::vector<std::string>& w, size_t i, int n) {
  std::string s;
  for (int k = 0; k < n; ++k) s += (k ? " " : "") + w[i + k];
  return s;
}
bool alpha_in(const std::string& w) {
  for (unsigned char c : w)
    if (std::isalpha(c) || c >= 0x80) return true;  // the generator's non-ASCII is letters only
  return false;
}

std::string oracle_gopher_quality(const std::string& text) {
  auto words = tokens(text);
  std::vector<std::string> nonp;
  for (auto& w : words)
    if (!(w.size() == 1 && punct(w[0]))) nonp.push_back(w);
  double n = double(nonp.size());
  if (n < 50) return "gopher_short_doc";
  if (n > 100000) return "gopher_long_doc";
  double total = 0;
  for (auto& w : nonp) total += double(len(w));
  double avg = total / n;
  if (avg < 3) return "gopher_below_avg_threshold";
  if (avg > 10) return "gopher_above_avg_threshold";
  if (double(count(text, "#")) / n > 0.1) return "gopher_too_many_hashes";
  if (double(count(text, "...") + count(text, "\u2026")) / n > 0.1)
    return "gopher_too_many_ellipsis";
  auto lines = splitlines(text);
  double bullets = 0, ell = 0;
  for (auto& l : lines) {
    std::string ls = l.substr(std::min(l.size(), l.find_first_not_of(" \t\n\r\v\f")));
    bullets += ls.rfind("\u2022", 0) == 0;
    std::string rs = l.substr(0, l.find_last_not_of(" \t\n\r\v\f") + 1);
    ell += endswith(rs, "...") || endswith(rs, "\u2026");
  }
  if (bullets / double(lines.size()) > 0.9) return "gopher_too_many_bullets";
  if (ell / double(lines.size()) > 0.3) return "gopher_too_many_end_ellipsis";
  double alpha = 0;
  for (auto& w : words) alpha += alpha_in(w);
  if (alpha / n < 0.8) return "gopher_below_alpha_threshold";
  std::set<std::string> stop = {"the", "be", "to", "of", "and", "that", "have", "with"};
  int stops = 0;
  for (auto& w : words) stops += stop.count(w);
  if (stops < 2) return "gopher_enough_stop_words";
  return "";
}

std::string oracle_gopher_repetition(const std::string& text) {
  double L = double(len(text));
  if (L == 0) return "";
  // paragraphs: re.split(r"\n{2,}", text.strip())
  std::vector<std::string> paras;
  std::string body = py_strip(text), cur;
  for (size_t i = 0; i < body.size();) {
    if (body.compare(i, 2, "\n\n") == 0) {
      paras.push_back(cur), cur.clear();
      while (i < body.size() && body[i] == '\n') ++i;
    } else {
      cur += body[i++];
    }
  }
  paras.push_back(cur);
  auto [pd, pc] = find_duplicates(paras);
  if (double(pd) / double(paras.size()) > 0.3) return "dup_para_frac";
  if (double(pc) / L > 0.2) return "dup_para_char_frac";
  auto lines = splitlines(text);
  auto [ld, lc] = find_duplicates(lines);
  if (double(ld) / double(lines.size()) > 0.3) return "dup_line_frac";
  if (double(lc) / L > 0.2) return "dup_line_char_frac";
  auto words = tokens(text);
  std::vector<std::pair<int, double>> top = {{2, 0.2}, {3, 0.18}, {4, 0.16}};
  for (auto [n, frac] : top) {
    if (words.size() < size_t(n)) continue;
    std::map<std::string, int> counts;
    std::vector<std::string> order;
    for (size_t i = 0; i + n <= words.size(); ++i) {
      auto g = join(words, i, n);
      if (counts[g]++ == 0) order.push_back(g);
    }
    std::string best = order[0];
    for (auto& g : order)
      if (counts[g] > counts[best]) best = g;
    if (double(len(best) * counts[best]) / L > frac) return "top_" + std::to_string(n) + "_gram";
  }
  std::vector<std::pair<int, double>> dup = {{5, 0.15}, {6, 0.14}, {7, 0.13},
                                             {8, 0.12}, {9, 0.11}, {10, 0.10}};
  for (auto [n, frac] : dup) {
    if (words.size() < size_t(n)) continue;
    std::set<std::string> seen;
    size_t rep = 0;
    for (size_t i = 0; i + n <= words.size();) {
      auto g = join(words, i, n);
      if (seen.count(g))
        rep += len(g), i += n;
      else
        seen.insert(g), ++i;
    }
    if (double(rep) / L > frac) return "duplicated_" + std::to_string(n) + "_n_grams";
  }
  return "";
}

int oracle_sentences(const std::string& line) {  // the documented sentence rule, by regex-free scan
  int n = 0;
  auto words = ws_split(line);
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    char last = w.back();
    if (last == '.' || last == '!' || last == '?')
      ++n;
    else if (i + 1 == words.size())
      ++n;  // trailing text without a terminator
  }
  return n;
}

std::pair<std::string, std::string> oracle_c4(const std::string& text) {
  std::vector<std::string> kept;
  int sentences = 0;
  for (auto raw : splitlines(text)) {
    std::string line = py_strip(raw);
    auto words = ws_split(line);
    bool long_word = false;
    for (auto& w : words) long_word |= len(w) > 1000;
    if (long_word) continue;
    // CITATION_REGEX = \[\d*]|\[edit]|\[citation needed]
    std::string c;
    for (size_t i = 0; i < line.size();) {
      size_t j = i + 1;
      while (line[i] == '[' && j < line.size() && std::isdigit((unsigned char)line[j])) ++j;
      if (line[i] == '[' && j < line.size() && line[j] == ']')
        i = j + 1;
      else if (line.compare(i, 6, "[edit]") == 0)
        i += 6;
      else if (line.compare(i, 17, "[citation needed]") == 0)
        i += 17;
      else
        c += line[i++];
    }
    line = c;
    bool term = !line.empty() && std::string(".?!\"'").find(line.back()) != std::string::npos;
    if (!term || endswith(line, "...")) continue;
    if (words.size() < 3) continue;
    std::string low = line;
    for (auto& ch : low) ch = char(std::tolower((unsigned char)ch));
    if (low.find("lorem ipsum") != std::string::npos) return {"lorem_ipsum", ""};
    if (low.find("javascript") != std::string::npos) continue;
    if (line.find('{') != std::string::npos) return {"curly_bracket", ""};
    bool pol = false;
    for (auto p : {"terms of use", "privacy policy", "cookie policy", "uses cookies",
                   "use of cookies", "use cookies"})
      pol |= low.find(p) != std::string::npos;
    if (pol) continue;
    sentences += oracle_sentences(line);
    kept.push_back(line);
  }
  if (sentences < 5) return {"too_few_sentences", ""};
  std::string out;
  for (size_t i = 0; i < kept.size(); ++i) out += (i ? "\n" : "") + kept[i];
  return {"", py_strip(out)};
}

std::string oracle_fineweb(const std::string& text) {
  auto lines = split_str(text, '\n');
  double n = double(lines.size()), p = 0, shorts = 0;
  for (auto& l : lines)
    p += !l.empty() && std::string(".'\"!?").find(l.back()) != std::string::npos;
  if (p / n <= 0.12) return "line_punct_ratio";
  for (auto& l : lines) shorts += len(l) <= 30;
  if (shorts / n >= 0.67) return "short_line_ratio";
  std::vector<std::string> ne;
  for (auto& l : lines)
    if (!py_strip(l).empty()) ne.push_back(l);
  double chars = double(len(text) - count(text, "\n"));
  if (chars == 0 || double(find_duplicates(ne).second) / chars >= 0.01) return "char_dup_ratio";
  auto words = tokens(text);
  if (words.empty() || double(count(text, "\n")) / double(words.size()) > 0.3) return "list_ratio";
  return "";
}

// ---- the generator ----------------------------------------------------------------------------
struct Gen {
  std::mt19937_64 rng;
  std::vector<std::string> vocab;
  explicit Gen(uint64_t seed) : rng(seed) {
    const char* syl[] = {"ka",  "lo",  "mi",  "ter", "sun",  "va", "ri",
                         "don", "pel", "ast", "or",  "quin", "é"};
    for (int i = 0; i < 3000; ++i) {
      std::string w;
      int k = 1 + int(rng() % 4);
      for (int j = 0; j < k; ++j) w += syl[rng() % 13];
      vocab.push_back(w);
    }
  }
  int uni(int a, int b) { return a + int(rng() % uint64_t(b - a + 1)); }
  bool coin(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }
  std::string word() {
    double r = std::uniform_real_distribution<double>(0, 1)(rng);
    if (r < 0.06)
      return std::vector<std::string>{"the", "of", "and", "to", "with", "The"}[rng() % 6];
    if (r < 0.08) return std::to_string(rng() % 1000);
    return vocab[rng() % vocab.size()];
  }
  // A document whose knobs wander around every threshold.
  std::string doc() {
    int lines = uni(1, 14);
    bool paragraphs = coin(0.3);
    std::string t;
    std::vector<std::string> made;
    for (int l = 0; l < lines; ++l) {
      std::string line;
      if (coin(0.08)) line += "\u2022 ";
      if (coin(0.1) && !made.empty()) {
        line = made[rng() % made.size()];  // duplicate line
      } else {
        int words = coin(0.2) ? uni(1, 4) : uni(5, 20);
        int sentence_len = uni(3, 9);
        for (int w = 0; w < words; ++w) {
          line += (w ? " " : "") + word();
          if (coin(0.01)) line += "#";
          if (coin(0.01)) line += " #tag";
          if (coin(0.005)) line += " [1]";
          if ((w + 1) % sentence_len == 0 && w + 1 < words) line += ".";
          if (coin(0.02)) line += ",";
        }
        double e = std::uniform_real_distribution<double>(0, 1)(rng);
        line += e < 0.55   ? "."
                : e < 0.65 ? "..."
                : e < 0.7  ? "\u2026"
                : e < 0.75 ? "!"
                : e < 0.8  ? "\""
                           : "";
        if (coin(0.02)) line += " javascript is required.";
        if (coin(0.01)) line = "Lorem ipsum dolor sit amet, consectetur.";
        if (coin(0.01)) line += " {x}.";
        if (coin(0.02)) line = "This site uses cookies to work well.";
        if (coin(0.03)) line = std::string(uni(4, 40), '-');
      }
      made.push_back(line);
      t += line;
      if (l + 1 < lines) t += paragraphs && coin(0.5) ? "\n\n" : "\n";
    }
    if (coin(0.1)) {  // a repeated phrase, for the n-gram rules
      std::string phrase;
      int n = uni(2, 6);
      for (int k = 0; k < n; ++k) phrase += (k ? " " : "") + word();
      int reps = uni(2, 12);
      for (int k = 0; k < reps; ++k) t += " " + phrase;
      t += ".";
    }
    return t;
  }
};

template <typename F>
void compare_all(const char* name, F&& check, int docs = 3000) {
  Gen g(42);
  std::map<std::string, int> reasons;
  for (int i = 0; i < docs; ++i) {
    std::string doc = g.doc();
    std::string got = check(doc, /*oracle=*/false), want = check(doc, true);
    ASSERT_EQ(got, want) << name << " doc " << i << ":\n" << doc;
    ++reasons[want.empty() || want.rfind("kept:", 0) == 0 ? "kept" : want];
  }
  std::string summary;
  for (auto& [r, n] : reasons) summary += r + "=" + std::to_string(n) + " ";
  std::printf("%s: %s\n", name, summary.c_str());
  EXPECT_GT(reasons["kept"], 0) << name << " keeps nothing: the generator does not reach inside";
}

}  // namespace

// The filters that read words decide the same from their own split and from the caller's (the
// pipeline splits once per document); a disagreement is reported as a decision of its own.
template <typename Filter>
std::string both_ways(const std::string& d, Filter filter) {
  std::vector<std::string_view> words;
  split_words(d, words);
  std::string own = filter(d, static_cast<const Words*>(nullptr)).reason,
              shared = filter(d, &words).reason;
  return own == shared ? own : "own split says '" + own + "', shared split says '" + shared + "'";
}

TEST(Filters, GopherQualityMatchesOracle) {
  GopherQualityConfig cfg;
  compare_all("gopher_quality", [&](const std::string& d, bool oracle) {
    return oracle ? oracle_gopher_quality(d)
                  : both_ways(d, [&](const std::string& t, const Words* w) {
                      return gopher_quality(t, cfg, w);
                    });
  });
}

TEST(Filters, GopherRepetitionMatchesOracle) {
  GopherRepetitionConfig cfg;
  compare_all("gopher_repetition", [&](const std::string& d, bool oracle) {
    return oracle ? oracle_gopher_repetition(d)
                  : both_ways(d, [&](const std::string& t, const Words* w) {
                      return gopher_repetition(t, cfg, w);
                    });
  });
}

TEST(Filters, C4MatchesOracleIncludingRewrite) {
  C4Config cfg;
  compare_all("c4", [&](const std::string& d, bool oracle) {
    if (oracle) {
      auto [r, t] = oracle_c4(d);
      return r.empty() ? "kept:" + t : r;
    }
    std::string t = d;
    auto r = c4_quality(t, cfg);
    // `rewrote` tells the pipeline whether its word split of the text is stale.
    if (r.keep && r.rewrote != (t != d)) return std::string("rewrote flag wrong");
    return r.keep ? "kept:" + t : std::string(r.reason);
  });
}

TEST(Filters, FineWebMatchesOracle) {
  FineWebConfig cfg;
  compare_all("fineweb", [&](const std::string& d, bool oracle) {
    return oracle ? oracle_fineweb(d) : both_ways(d, [&](const std::string& t, const Words* w) {
      return fineweb_quality(t, cfg, w);
    });
  });
}

TEST(Filters, CountWordsIsTheSplitsSize) {
  std::mt19937 rng(5);
  const std::string alphabet = "ab .,!(\")'-\n\t  \xc3\xa9";
  std::vector<std::string_view> words;
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    for (int k = int(rng() % 40); k > 0; --k) s += alphabet[rng() % alphabet.size()];
    split_words(s, words);
    ASSERT_EQ(count_words(s), words.size()) << "'" << s << "'";
  }
}

// Documents built to sit exactly on a threshold (kept, since every rule is strict) and one step
// past it (dropped).
TEST(Filters, ThresholdEdges) {
  GopherQualityConfig q;
  auto words = [](int n, const std::string& w) {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + w;
    return s;
  };
  std::string base = "the of " + words(48, "word");  // 50 words, 2 stop words
  EXPECT_TRUE(gopher_quality(base, q).keep);
  EXPECT_STREQ(gopher_quality("the of " + words(47, "word"), q).reason, "gopher_short_doc");
  // 10 '#' in 100 words is exactly 0.1 (kept); 11 is over.
  std::string hundred = "the of " + words(98, "word");
  EXPECT_TRUE(gopher_quality(hundred + std::string(10, '#'), q).keep);
  EXPECT_STREQ(gopher_quality(hundred + std::string(11, '#'), q).reason, "gopher_too_many_hashes");
  // Stop words: one is too few.
  EXPECT_STREQ(gopher_quality("the " + words(49, "word"), q).reason, "gopher_enough_stop_words");
  // Mean word length exactly 3 is kept, below is not.
  EXPECT_TRUE(gopher_quality("the and " + words(48, "abc"), q).keep);
  EXPECT_STREQ(gopher_quality("to of " + words(48, "ab"), q).reason, "gopher_below_avg_threshold");

  C4Config c;
  std::string five = "One two three. Four five six. Seven eight nine. Ten eleven twelve. A b c.";
  std::string t = five;
  EXPECT_TRUE(c4_quality(t, c).keep);
  t = "One two three. Four five six. Seven eight nine. Ten eleven twelve.";
  EXPECT_STREQ(c4_quality(t, c).reason, "too_few_sentences");
  t = five + "\nSee {this} now.";
  EXPECT_STREQ(c4_quality(t, c).reason, "curly_bracket");
  t = five + "\nno punctuation here\nEnable javascript to see this.";
  EXPECT_TRUE(c4_quality(t, c).keep);
  EXPECT_EQ(t, five);
}

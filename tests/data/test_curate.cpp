// The curation oracle: a generated corpus with planted exact duplicates, near-duplicates at known
// word 5-gram Jaccard similarities (computed here, independently), clearly distinct documents and
// PII at known places, run through the whole default pipeline. Plus bad input.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <random>
#include <set>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/data/curate.h"
#include "kiln/data/jsonl.h"
#include "kiln/io/file.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::curate;

namespace {

using Doc = std::vector<std::vector<std::string>>;  // lines of words; each line ends with '.'

struct Corpus {
  std::mt19937_64 rng{7};
  std::vector<std::string> vocab, fresh;
  Corpus() {
    const char* syl[] = {"ka",  "lo",  "mi",  "ter", "sun",  "va",  "ri",
                         "don", "pel", "ast", "or",  "quin", "bel", "cor"};
    std::set<std::string> seen;
    while (vocab.size() < 4000 || fresh.size() < 4000) {
      std::string w;
      int k = 2 + int(rng() % 3);
      for (int j = 0; j < k; ++j) w += syl[rng() % 14];
      if (!seen.insert(w).second) continue;
      (vocab.size() < 4000 ? vocab : fresh).push_back(w);
    }
  }
  std::string word() {
    if (rng() % 12 == 0)
      return std::vector<std::string>{"the", "of", "and", "to", "with", "that"}[rng() % 6];
    return vocab[rng() % vocab.size()];
  }
  Doc doc() {
    Doc d(6 + rng() % 5);
    for (auto& line : d) {
      int n = 9 + int(rng() % 8);
      for (int i = 0; i < n; ++i) line.push_back(word());
    }
    d[0][1] = "the", d[0][4] = "of";  // Gopher's two stop words, always
    return d;
  }
};

std::string render(const Doc& d) {
  std::string t;
  for (size_t l = 0; l < d.size(); ++l) {
    for (size_t i = 0; i < d[l].size(); ++i) t += (i ? " " : "") + d[l][i];
    t += ".";
    if (l + 1 < d.size()) t += "\n";
  }
  return t;
}

// The true word 5-gram Jaccard similarity (words lower-cased, punctuation dropped).
double jaccard5(const Doc& a, const Doc& b) {
  auto grams = [](const Doc& d) {
    std::vector<std::string> w;
    for (auto& line : d)
      for (auto& x : line) w.push_back(x);
    std::set<std::string> g;
    for (size_t i = 0; i + 5 <= w.size(); ++i)
      g.insert(w[i] + " " + w[i + 1] + " " + w[i + 2] + " " + w[i + 3] + " " + w[i + 4]);
    return g;
  };
  auto ga = grams(a), gb = grams(b);
  size_t inter = 0;
  for (auto& g : ga) inter += gb.count(g);
  return double(inter) / double(ga.size() + gb.size() - inter);
}

std::map<std::string, nlohmann::json> read_by_id(const std::string& path) {
  std::map<std::string, nlohmann::json> r;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    r[j["id"].get<std::string>()] = j;
  }
  return r;
}

}  // namespace

TEST(Curate, PlantedCorpus) {
  set_num_threads(2);
  test::TempDir dir("curate");
  Corpus c;
  struct Planted {
    std::string id, text, kind, expect;  // expect: the text the output must hold ("" = removed)
    double jaccard = 0;
  };
  std::vector<Planted> docs;
  std::vector<Doc> distinct;
  for (int i = 0; i < 600; ++i) {
    distinct.push_back(c.doc());
    docs.push_back(
        {"d" + std::to_string(i), render(distinct.back()), "distinct", render(distinct.back())});
  }
  // PII at known places, in documents 0..59; what the output must say instead.
  const char* pii[][2] = {
      {"Write to jane.doe+news@mail.example.com for details", "Write to <EMAIL> for details"},
      {"The server at 192.168.10.254 answered", "The server at <IP_ADDRESS> answered"},
      {"Call (555) 123-4567 after noon", "Call <PHONE_NUMBER> after noon"},
      {"Route via 2001:db8:85a3::8a2e:370:7334 today", "Route via <IP_ADDRESS> today"},
      {"Dial +44 20 7946 0958 from abroad", "Dial <PHONE_NUMBER> from abroad"},
      {"Or phone 555.867.5309 and ask for Jenny", "Or phone <PHONE_NUMBER> and ask for Jenny"}};
  for (int i = 0; i < 60; ++i) {
    auto& p = pii[i % 6];
    docs[size_t(i)].text += std::string("\n") + p[0] + " and the rest.";
    docs[size_t(i)].expect += std::string("\n") + p[1] + " and the rest.";
    docs[size_t(i)].kind = "pii";
  }
  // Text that looks like PII but is not, which must stay as it is.
  const char* lookalike[] = {"Version 1.2.3.4 of the tool was released with the fix",
                             "It ran from 12:30:45 to the end of the day",
                             "The ratio was 3.14159 and the total 2024-01-15 today",
                             "See section 4.2.1 of the manual with care"};
  for (int i = 60; i < 100; ++i) {
    std::string s = std::string("\n") + lookalike[i % 4] + ".";
    docs[size_t(i)].text += s, docs[size_t(i)].expect += s;
  }
  // Exact duplicates of documents 100..179, appended later.
  for (int i = 100; i < 180; ++i)
    docs.push_back({"x" + std::to_string(i), docs[size_t(i)].text, "exact", ""});
  // Near-duplicates of documents 200..439 at known Jaccard: replace words one at a time while the
  // similarity stays at or above the target.
  const double targets[] = {0.8, 0.85, 0.9, 0.95};
  for (int i = 200; i < 440; ++i) {
    double target = targets[(i - 200) % 4];
    Doc d = distinct[size_t(i)];
    while (true) {
      Doc t = d;
      auto& line = t[c.rng() % t.size()];
      line[c.rng() % line.size()] = c.fresh[c.rng() % c.fresh.size()];
      if (jaccard5(t, distinct[size_t(i)]) < target) break;
      d = t;
    }
    docs.push_back(
        {"n" + std::to_string(i), render(d), "near", "", jaccard5(d, distinct[size_t(i)])});
  }
  // Shuffle the planted copies among each other (they stay after their originals).
  std::shuffle(docs.begin() + 600, docs.end(), c.rng);
  std::string input = dir / "in.jsonl";
  {
    std::ofstream out(input);
    for (auto& d : docs)
      out << nlohmann::json{{"id", d.id}, {"text", d.text}, {"meta", {{"kind", d.kind}}}}.dump()
          << "\n";
  }
  CurateOptions opts;
  opts.inputs = {input};
  opts.output = dir / "clean.jsonl";
  opts.rejected = dir / "rejected.jsonl";
  opts.config = default_curate_config();
  opts.progress = false;
  CurateReport r = run_curate(opts);
  std::printf("%s", r.table().c_str());

  auto out = read_by_id(opts.output);
  auto rej = read_by_id(opts.rejected);
  int distinct_kept = 0, exact_removed = 0, exact_n = 0;
  std::map<double, std::pair<int, int>> near;  // target -> removed, total
  int near_removed = 0, near_n = 0;
  for (auto& d : docs) {
    bool kept = out.count(d.id) > 0;
    EXPECT_TRUE(kept || rej.count(d.id)) << d.id << " is in neither output";
    if (d.kind == "exact") {
      ++exact_n, exact_removed += !kept;
      if (!kept) {
        EXPECT_EQ(rej[d.id]["reason"], "exact_duplicate");
      }
    } else if (d.kind == "near") {
      ASSERT_GE(d.jaccard, 0.8);
      ++near_n, near_removed += !kept;
      double t = d.jaccard >= 0.95 ? 0.95 : d.jaccard >= 0.9 ? 0.9 : d.jaccard >= 0.85 ? 0.85 : 0.8;
      near[t].first += !kept, ++near[t].second;
    } else {
      distinct_kept += kept;
      if (kept) {
        EXPECT_EQ(out[d.id]["text"], d.expect)
            << d.id;  // PII redacted exactly, nothing else changed
        EXPECT_EQ(out[d.id]["meta"]["kind"], d.kind) << "other fields are kept";
      } else {
        ADD_FAILURE() << d.id << " (" << d.kind << ") dropped: " << rej[d.id].dump();
      }
    }
  }
  for (auto& [t, rn] : near)
    std::printf("near-duplicates at J >= %.2f: %d/%d removed\n", t, rn.first, rn.second);
  EXPECT_EQ(exact_removed, exact_n) << "exact duplicates must all go";
  EXPECT_GE(double(near_removed) / near_n, 0.95) << near_removed << "/" << near_n;
  EXPECT_GE(double(distinct_kept) / 600, 0.99) << distinct_kept << "/600";
  EXPECT_EQ(r.pii.email, 10);
  EXPECT_EQ(r.pii.ipv4 + r.pii.ipv6, 20);
  EXPECT_EQ(r.pii.phone, 30);
  // Planted output file layout: report written next to the output.
  EXPECT_TRUE(file_exists(default_report_path(opts.output)));
}

TEST(Curate, BadInputIsCountedWithFileAndLine) {
  set_num_threads(2);
  test::TempDir dir("curate-bad");
  std::string good = R"({"text": "A fine line of text.", "id": 1})";
  std::string a = dir / "a.jsonl", empty = dir / "empty.jsonl", big = dir / "big.jsonl";
  {
    std::ofstream f(a, std::ios::binary);
    f << good << "\n"
      << "{not json\n"  // line 2
      << R"({"id": 3})"
      << "\n"                                   // line 3: missing field
      << "{\"text\": \"bad \xC3\x28 utf8\"}\n"  // line 4: invalid UTF-8
      << R"([1, 2])"
      << "\n"  // line 5: not an object
      << R"({"text": 5})"
      << "\n"   // line 6: not a string
      << good;  // line 7, no final newline
  }
  { std::ofstream f(empty); }
  {
    std::ofstream f(big, std::ios::binary);
    f << good << "\n{\"text\": \"" << std::string(100u << 20, 'a') << "\"}\n" << good << "\n";
  }
  CurateOptions opts;
  opts.inputs = {a, empty, big};
  opts.output = dir / "out/clean.jsonl";
  opts.config = config_from_step_list("normalize,pii");
  opts.progress = false;
  CurateReport r = run_curate(opts);
  const auto& counts = r.errors.counts();
  EXPECT_EQ(counts.at(JsonlIssue::invalid_json), 1);
  EXPECT_EQ(counts.at(JsonlIssue::missing_field), 1);
  EXPECT_EQ(counts.at(JsonlIssue::invalid_utf8), 1);
  EXPECT_EQ(counts.at(JsonlIssue::not_an_object), 1);
  EXPECT_EQ(counts.at(JsonlIssue::field_not_string), 1);
  EXPECT_EQ(counts.at(JsonlIssue::line_too_long), 1);
  EXPECT_EQ(counts.at(JsonlIssue::empty_file), 1);
  std::map<JsonlIssue, std::pair<std::string, int64_t>> where;
  for (auto& e : r.errors.examples()) where[e.issue] = {e.file, e.line};
  EXPECT_EQ(where[JsonlIssue::invalid_json], std::make_pair(a, int64_t(2)));
  EXPECT_EQ(where[JsonlIssue::missing_field], std::make_pair(a, int64_t(3)));
  EXPECT_EQ(where[JsonlIssue::invalid_utf8], std::make_pair(a, int64_t(4)));
  EXPECT_EQ(where[JsonlIssue::line_too_long], std::make_pair(big, int64_t(2)));
  EXPECT_EQ(where[JsonlIssue::empty_file], std::make_pair(empty, int64_t(0)));
  EXPECT_EQ(r.docs_written, 4);
  std::string text = read_file(opts.output);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4);

  // --strict fails at the first bad line, naming it, and leaves no output behind.
  opts.strict = true;
  opts.output = dir / "strict.jsonl";
  try {
    run_curate(opts);
    ADD_FAILURE() << "strict mode accepted bad input";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.jsonl line 2"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(opts.output));
  EXPECT_FALSE(file_exists(opts.output + ".spool.tmp"));
}

// A line nesting a field 100,000 deep would overflow the stack in dump() when the document is
// written out; it is a bad line (invalid_json, naming the limit) before it is parsed. Depth 128,
// the limit, is still accepted.
TEST(Curate, NestingPastTheLimitIsABadLine) {
  auto nested = [](int depth) {
    return R"({"text": "t", "meta": )" + std::string(size_t(depth), '[') +
           std::string(size_t(depth), ']') + "}";
  };
  nlohmann::ordered_json obj;
  JsonlIssue issue{};
  std::string detail;
  EXPECT_FALSE(parse_jsonl_object(nested(100000), "text", obj, issue, detail));
  EXPECT_EQ(issue, JsonlIssue::invalid_json);
  EXPECT_NE(detail.find("nesting depth is over kiln's limit of 128"), std::string::npos) << detail;
  EXPECT_TRUE(parse_jsonl_object(nested(127), "text", obj, issue, detail)) << detail;
  EXPECT_FALSE(parse_jsonl_object(nested(128), "text", obj, issue, detail));  // + the outer {}
}

// The fast writer of kept documents is nlohmann's dump() byte for byte: every control character,
// quotes, backslashes, multi-byte UTF-8, and the other fields in their order and types.
TEST(Curate, TextWriterMatchesNlohmannDump) {
  std::string text = "say \"hi\" \\ caf\xc3\xa9 \xe2\x80\xa6 \x7f end";
  for (int c = 0; c < 0x20; ++c) text += char(c), text += 'x';
  auto obj = nlohmann::ordered_json::parse(
      R"({"id": 7, "text": "", "meta": {"text": "", "k": [1, 2.5, null, true]}, "u": "\u00e9\n"})");
  for (std::string_view t : {std::string_view(text), std::string_view(""), std::string_view("a")}) {
    auto want = obj;
    want["text"] = std::string(t);
    EXPECT_EQ(dump_jsonl_with_text(obj, "text", t), want.dump() + "\n");
  }
}

TEST(Curate, ConfigRejectsUnknownKeys) {
  test::TempDir dir("curate-cfg");
  std::string path = dir / "c.yaml";
  {
    std::ofstream f(path);
    f << "steps:\n  - gopher_quality:\n      min_doc_word: 10\n";
  }
  try {
    load_curate_config(path);
    ADD_FAILURE() << "unknown key accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key 'min_doc_word'"), std::string::npos)
        << e.what();
  }
  // The shipped recipe parses and equals the defaults' step order.
  CurateConfig shipped = load_curate_config(test::source_dir() + "/configs/curate.yaml");
  CurateConfig def = default_curate_config();
  ASSERT_EQ(shipped.steps.size(), def.steps.size());
  for (size_t i = 0; i < def.steps.size(); ++i) EXPECT_EQ(shipped.steps[i].kind, def.steps[i].kind);
}

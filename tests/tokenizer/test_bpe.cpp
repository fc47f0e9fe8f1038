// The BPE core against a plain reference (tiktoken's loop, written the obvious way), on both of
// its paths (short pieces and the rank-grouped list for long ones), and its cost on pathological
// input counted in steps (work.h), never timed.
#include "kiln/tokenizer/bpe.h"

#include <gtest/gtest.h>

#include <random>

#include "kiln/io/file.h"
#include "kiln/tokenizer/tokenizer_impl.h"
#include "kiln/tokenizer/work.h"
#include "oracle.h"

namespace kiln::tok {
namespace {

// Reference: repeatedly merge the adjacent pair of lowest rank, leftmost on ties. O(n^2).
std::vector<int32_t> reference_encode(const Bpe& bpe,
                                      const std::vector<std::array<int32_t, 4>>& merges,
                                      std::string_view piece) {
  std::vector<int32_t> parts;
  for (char c : piece) parts.push_back(bpe.byte_id(uint8_t(c)));
  while (true) {
    int32_t best_rank = INT32_MAX, best_i = -1, merged = -1;
    for (size_t i = 0; i + 1 < parts.size(); ++i)
      for (const auto& [l, r, m, rank] : merges)
        if (l == parts[i] && r == parts[i + 1] && rank < best_rank) {
          best_rank = rank;
          best_i = int32_t(i);
          merged = m;
        }
    if (best_i < 0) break;
    parts[size_t(best_i)] = merged;
    parts.erase(parts.begin() + best_i + 1);
  }
  return parts;
}

// A small vocabulary over "abc": bytes, then merges with shuffled ranks.
struct Toy {
  Bpe bpe;
  std::vector<std::array<int32_t, 4>> merges;  // left, right, merged, rank
};

Toy make_toy(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[size_t(b)] = std::string(1, char(b));
  std::vector<std::array<int32_t, 3>> pairs;
  std::vector<int32_t> pool = {'a', 'b', 'c'};
  for (int k = 0; k < 40; ++k) {
    int32_t l = pool[rng() % pool.size()], r = pool[rng() % pool.size()];
    std::string t = tokens[size_t(l)] + tokens[size_t(r)];
    if (t.size() > 6 || std::find(tokens.begin(), tokens.end(), t) != tokens.end()) continue;
    tokens.push_back(t);
    pairs.push_back({l, r, int32_t(tokens.size() - 1)});
    pool.push_back(int32_t(tokens.size() - 1));
  }
  Toy toy{Bpe(tokens), {}};
  std::vector<int32_t> ranks(pairs.size());
  for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = int32_t(i);
  std::shuffle(ranks.begin(), ranks.end(), rng);
  for (size_t i = 0; i < pairs.size(); ++i) {
    toy.bpe.add_merge(pairs[i][0], pairs[i][1], pairs[i][2], ranks[i]);
    toy.merges.push_back({pairs[i][0], pairs[i][1], pairs[i][2], ranks[i]});
  }
  return toy;
}

TEST(Bpe, BothPathsMatchTheReference) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    Toy toy = make_toy(seed);
    std::mt19937 rng(seed + 100);
    // Lengths on both sides of kLongPiece, so the long-piece path is checked too.
    for (size_t len : {1, 2, 3, 7, 30, 127, 128, 129, 300, 700}) {
      std::string piece;
      for (size_t i = 0; i < len; ++i) piece += "abc"[rng() % 3];
      std::vector<int32_t> got;
      toy.bpe.encode_piece(piece, got);
      EXPECT_EQ(got, reference_encode(toy.bpe, toy.merges, piece))
          << "seed " << seed << " " << piece;
      std::string back;
      for (int32_t id : got) back += toy.bpe.token(id);
      EXPECT_EQ(back, piece);
    }
  }
}

// tiktoken's own loop over byte strings: merge the adjacent pair whose concatenation has the
// lowest rank (= id), leftmost on ties. O(n^2) lookups.
std::vector<int32_t> reference_tiktoken(const Bpe& bpe, std::string_view piece) {
  std::vector<std::string> parts;
  for (char c : piece) parts.push_back(std::string(1, c));
  while (parts.size() > 1) {
    int32_t best = INT32_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      int32_t r = bpe.find(parts[i] + parts[i + 1]);
      if (r >= 0 && r < best) {
        best = r;
        at = i;
      }
    }
    if (best == INT32_MAX) break;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + std::ptrdiff_t(at) + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& p : parts) ids.push_back(bpe.find(p));
  return ids;
}

TEST(Bpe, RankFilePathsMatchTiktokenLoop) {
  // cl100k's ranks, pieces short (tiktoken's loop) and long (grouped by rank) against the
  // reference.
  KILN_REQUIRE_REFS();
  Tokenizer tok = Tokenizer::load(oracle::gpt_file("cl100k"));
  const Bpe& bpe = tok.impl().bpe;
  std::mt19937 rng(11);
  std::string brown = read_file(oracle::source_dir() + "/data/brown.txt").substr(0, 200000);
  std::erase_if(brown, [](char c) { return c == ' ' || c == '\n'; });
  for (size_t len : {5, 60, 128, 129, 700, 3000}) {
    for (int trial = 0; trial < 3; ++trial) {
      std::string piece;
      if (trial == 0) piece = brown.substr(rng() % (brown.size() - len), len);
      if (trial == 1) piece.assign(len, 'a');
      if (trial == 2)
        for (size_t i = 0; i < len; ++i) piece += "abcdefghij"[rng() % 10];
      std::vector<int32_t> got;
      bpe.encode_piece(piece, got);
      EXPECT_EQ(got, reference_tiktoken(bpe, piece)) << "length " << len << " trial " << trial;
    }
  }
}

// Work per input byte: pre-tokenizer characters examined plus BPE steps (work.h).
double work_per_byte(const Tokenizer& tok, const std::string& text) {
  encode_work() = {};
  auto ids = tok.encode(text);
  EncodeWork w = encode_work();
  EXPECT_EQ(tok.decode(ids), text);
  return double(w.split + w.bpe) / double(text.size());
}

TEST(Bpe, LinearWorkOnPathologicalInput) {
  // Counted work, not time: on each pathological kind, 1 MB costs the same steps per byte as
  // 64 kB (a quadratic pass would cost 16x as many), for every built-in split pattern. Before
  // the fix, a run of digits re-scanned the whole run for every 3-digit piece.
  KILN_REQUIRE_REFS();
  const std::vector<std::pair<std::string, std::string>> tokenizers = {
      {"r50k", oracle::gpt_file("r50k")},
      {"cl100k", oracle::gpt_file("cl100k")},
      {"o200k", oracle::gpt_file("o200k")},
      {"llama3", oracle::ref_file("llama3.tiktoken")}};
  for (const auto& [name, path] : tokenizers) {
    Tokenizer tok = Tokenizer::load(path);
    for (const std::string& kind : oracle::pathological_kinds()) {
      double small = work_per_byte(tok, oracle::pathological(kind, 1 << 16));
      double big = work_per_byte(tok, oracle::pathological(kind, 1 << 20));
      EXPECT_LT(big, 1.1 * small + 1) << name << ", " << kind << ": " << small
                                      << " steps per byte at 64 kB, " << big << " at 1 MB";
      EXPECT_LT(big, 64) << name << ", " << kind;
      std::cerr << "[work] " << name << " " << kind << ": " << small << " / " << big
                << " steps per byte at 64 kB / 1 MB\n";
    }
  }
}

TEST(Bpe, WorkCounterCountsBothStages) {
  // The test above trusts the counter, so it must see both stages: the splitter examines every
  // character, and every piece costs BPE at least one step.
  KILN_REQUIRE_REFS();
  Tokenizer tok = Tokenizer::load(oracle::gpt_file("cl100k"));
  std::string digits = oracle::pathological("digits", 3000);
  encode_work() = {};
  tok.encode(digits);
  EXPECT_GE(encode_work().split, digits.size());
  EXPECT_GE(encode_work().bpe, digits.size() / 3);
}

}  // namespace
}  // namespace kiln::tok

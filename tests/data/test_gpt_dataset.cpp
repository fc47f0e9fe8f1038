// GPT samples, blending and the loader. Every token in the test datasets is unique (its global
// position plus a per-dataset base), so a sample's tokens say exactly where they came from:
// consecutive tokens must be consecutive in a document or jump from a document's last token to
// another document's first. Checked: T+1 tokens per sample, boundaries, one-token overlap
// between consecutive samples (Megatron's extra token), split disjointness, blend proportions,
// determinism for a seed, and a stop/resume that continues the exact stream.
#include "kiln/data/gpt_dataset.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::TempDir;

struct Written {
  std::string prefix;
  std::vector<std::pair<int32_t, int32_t>> docs;  // first, last token of each document
  std::set<int32_t> firsts, lasts;
};

// n documents of 1..max_len tokens; token = base + global position.
Written write_unique(const std::string& prefix, int n, int max_len, int32_t base, uint64_t seed) {
  Written w{prefix, {}, {}, {}};
  Rng rng(seed);
  IndexedDatasetWriter writer(prefix, TokenDtype::int32);
  int32_t next = base;
  for (int d = 0; d < n; ++d) {
    int len = 1 + int(rng.below(uint64_t(max_len)));
    std::vector<int32_t> ids(static_cast<size_t>(len));
    for (auto& t : ids) t = next++;
    writer.add_document(ids);
    w.docs.emplace_back(ids.front(), ids.back());
    w.firsts.insert(ids.front());
    w.lasts.insert(ids.back());
  }
  writer.finalize();
  return w;
}

// T+1 tokens with nothing written past them, each step inside a document or across a boundary.
void check_sample(const std::vector<int32_t>& s, int T, const Written& w) {
  ASSERT_EQ(s.size(), size_t(T) + 2);
  ASSERT_EQ(s[size_t(T) + 1], -7) << "wrote past T+1 tokens";
  for (int t = 0; t <= T; ++t) ASSERT_NE(s[size_t(t)], -7) << "fewer than T+1 tokens";
  for (int t = 0; t < T; ++t) {
    int32_t a = s[size_t(t)], b = s[size_t(t) + 1];
    if (b == a + 1 && !w.lasts.count(a)) continue;  // same document
    ASSERT_TRUE(w.lasts.count(a) && w.firsts.count(b))
        << "tokens " << a << " -> " << b << " at " << t << " are not a document boundary";
  }
}

std::vector<int32_t> sample_of(const GptDataset& g, int64_t i, bool shuffled) {
  std::vector<int32_t> s(size_t(g.T()) + 2, -7);
  shuffled ? g.sample(i, s.data()) : g.sample_unshuffled(i, s.data());
  return s;
}

TEST(GptDataset, SplitAndBlendParsingFollowMegatron) {
  auto s = parse_split("949,50,1");
  EXPECT_NEAR(s[0], 0.949, 1e-12);
  EXPECT_NEAR(s[2], 0.001, 1e-12);
  EXPECT_EQ(parse_split("98,2")[2], 0.0);
  EXPECT_THROW(parse_split("1,x"), Error);
  EXPECT_THROW(parse_split("0,0,0"), Error);
  EXPECT_THROW(parse_split("1,1,1,1"), Error);
  // Megatron's docstring example and its rounding excess rule.
  EXPECT_EQ(split_document_bounds(parse_split("90,9,1"), 1000),
            (std::array<int64_t, 4>{0, 900, 990, 1000}));
  // 3.33 rounds to 3 three times; the missing document shifts every end (Megatron: [0, 4, 7, 10]).
  EXPECT_EQ(split_document_bounds(parse_split("1,1,1"), 10), (std::array<int64_t, 4>{0, 4, 7, 10}));
  EXPECT_EQ(split_document_bounds(parse_split("98,2,0"), 1), (std::array<int64_t, 4>{0, 1, 1, 1}));
  auto b = parse_blend({"0.7", "data/a", "0.7", "data/b"});
  ASSERT_EQ(b.size(), 2u);
  EXPECT_DOUBLE_EQ(b[0].first, 0.5);
  EXPECT_EQ(b[1].second, "data/b");
  EXPECT_EQ(parse_blend({"data/a"})[0].first, 1.0);
  EXPECT_THROW(parse_blend({"0.7", "data/a", "0.3"}), Error);
  EXPECT_THROW(parse_blend({"-1", "data/a", "1", "data/b"}), Error);
}

TEST(GptDataset, SamplesCrossDocumentBoundariesAndTileTheEpoch) {
  TempDir dir("gpt");
  for (int T : {1, 7, 64}) {
    auto w = write_unique(dir / str("a", T), 200, 40, 1000, uint64_t(T));
    auto ds = IndexedDataset::open(w.prefix);
    GptDataset g(ds, 0, 200, T, 0, 5);
    EXPECT_EQ(g.epochs(), 1);
    EXPECT_EQ(g.size(), (g.tokens_per_epoch() - 1) / T);
    std::vector<int32_t> prev;
    std::set<int32_t> seen;
    for (int64_t j = 0; j < g.size(); ++j) {
      auto s = sample_of(g, j, false);
      check_sample(s, T, w);
      if (!prev.empty()) EXPECT_EQ(s[0], prev[size_t(T)]) << "samples overlap by one token";
      seen.insert(s.begin(), s.begin() + T + 1);
      prev = s;
    }
    // One epoch: every token but the dropped partial tail is seen exactly once as a position.
    EXPECT_EQ(int64_t(seen.size()), g.size() * T + 1);
    // The shuffle is a permutation of the same samples.
    std::multiset<int32_t> firsts_u, firsts_s;
    for (int64_t i = 0; i < g.size(); ++i) {
      firsts_u.insert(sample_of(g, i, false)[0]);
      auto s = sample_of(g, i, true);
      check_sample(s, T, w);
      firsts_s.insert(s[0]);
    }
    EXPECT_EQ(firsts_u, firsts_s);
  }
}

TEST(GptDataset, EpochsRepeatDocumentsToReachTheRequestedSamples) {
  TempDir dir("gpt");
  auto w = write_unique(dir / "a", 30, 20, 0, 9);
  auto ds = IndexedDataset::open(w.prefix);
  const int T = 16;
  GptDataset one(ds, 0, 30, T, 0, 1);
  for (int64_t want : {one.size() + 1, 3 * one.size() + 2, 10 * one.size()}) {
    GptDataset g(ds, 0, 30, T, want, 1);
    EXPECT_GE(g.size(), want);
    EXPECT_GT(g.epochs(), 1);
    std::map<int32_t, int> count;  // first token of each document -> times seen as a position
    for (int64_t i = 0; i < g.size(); ++i) {
      auto s = sample_of(g, i, true);
      check_sample(s, T, w);
      for (int t = 0; t < T; ++t)
        if (w.firsts.count(s[size_t(t)])) ++count[s[size_t(t)]];
    }
    for (auto& [tok, c] : count) EXPECT_LE(c, g.epochs()) << tok;
  }
  EXPECT_THROW(GptDataset(ds, 0, 1, 1000, 0, 1), Error);  // fewer than T+1 tokens
  EXPECT_THROW(GptDataset(ds, 0, 31, T, 0, 1), Error);    // beyond the documents
}

TEST(GptDataset, BlendFollowsWeightsWithErrorMinimizingAssignment) {
  TempDir dir("gpt");
  auto a = write_unique(dir / "a", 300, 50, 0, 1);
  auto b = write_unique(dir / "b", 100, 50, 10'000'000, 2);
  auto c = write_unique(dir / "c", 100, 50, 20'000'000, 3);
  const int T = 8;
  std::vector<std::shared_ptr<const GptDataset>> parts;
  for (auto* w : {&a, &b, &c})
    parts.push_back(std::make_shared<GptDataset>(IndexedDataset::open(w->prefix), 0,
                                                 int64_t(w->docs.size()), T, 2000, 3));
  BlendedDataset blend(parts, {0.5, 0.3, 0.2}, 3000);
  std::vector<int64_t> n(3, 0);
  for (int64_t i = 0; i < blend.size(); ++i) {
    ++n[size_t(blend.dataset_of(i))];
    // Within every prefix the realized share is within one sample of the weight.
    if (i % 97 == 0)
      for (int k = 0; k < 3; ++k)
        EXPECT_LE(std::abs(double(n[size_t(k)]) - (i + 1) * std::array{0.5, 0.3, 0.2}[k]),
                  1.0 + 1e-9);
    std::vector<int32_t> s(T + 2, -7);
    blend.sample(i, s.data());
    const Written& w = blend.dataset_of(i) == 0 ? a : blend.dataset_of(i) == 1 ? b : c;
    check_sample(s, T, w);
  }
  EXPECT_EQ(n, (std::vector<int64_t>{1500, 900, 600}));
}

LoaderConfig config(const std::vector<std::string>& blend, int T, uint64_t seed, int64_t n) {
  LoaderConfig cfg;
  cfg.blend = parse_blend(blend);
  cfg.split = parse_split("90,10,0");
  cfg.T = T;
  cfg.seed = seed;
  cfg.train_samples = n;
  return cfg;
}

std::vector<int32_t> draw(Loader& l, int batches, int B) {
  std::vector<int32_t> all, ids(size_t(B) * l.T()), tg(size_t(B) * l.T());
  for (int k = 0; k < batches; ++k) {
    l.next(B, ids.data(), tg.data());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t + 1 < l.T(); ++t)
        EXPECT_EQ(tg[size_t(b * l.T() + t)], ids[size_t(b * l.T() + t + 1)]);
    all.insert(all.end(), ids.begin(), ids.end());
    all.insert(all.end(), tg.begin(), tg.end());
  }
  return all;
}

TEST(Loader, StreamIsDeterministicAndResumesExactly) {
  TempDir dir("gpt");
  auto a = write_unique(dir / "a", 400, 60, 0, 1);
  auto b = write_unique(dir / "b", 200, 60, 10'000'000, 2);
  const int T = 32, B = 4;
  auto cfg = config({"0.7", a.prefix, "0.3", b.prefix}, T, 42, 40 * B);
  Loader l1(cfg), l2(cfg);
  auto s1 = draw(l1, 40, B), s2 = draw(l2, 40, B);
  EXPECT_EQ(s1, s2);
  EXPECT_EQ(l1.state().position, 40 * B);

  // Stop after 15 batches, rebuild from the config, restore the position, continue.
  Loader first(cfg);
  auto head = draw(first, 15, B);
  Loader::State saved = first.state();
  Loader resumed(cfg);
  resumed.set_state(saved);
  auto tail = draw(resumed, 25, B);
  head.insert(head.end(), tail.begin(), tail.end());
  EXPECT_EQ(head, s1);

  // Another seed gives another order of the same kind of samples.
  Loader other(config({"0.7", a.prefix, "0.3", b.prefix}, T, 43, 40 * B));
  EXPECT_NE(draw(other, 40, B), s1);

  // Positions past the end wrap around.
  Loader wrap(cfg);
  wrap.set_state({l1.train().size()});
  std::vector<int32_t> i1(size_t(B) * T), t1(i1.size()), i2(i1.size()), t2(i1.size());
  wrap.next(B, i1.data(), t1.data());
  Loader start(cfg);
  start.next(B, i2.data(), t2.data());
  EXPECT_EQ(i1, i2);
}

TEST(Loader, BlendProportionsAndSplitsAreRespected) {
  TempDir dir("gpt");
  auto a = write_unique(dir / "a", 500, 60, 0, 4);
  auto b = write_unique(dir / "b", 500, 60, 10'000'000, 5);
  const int T = 16, B = 8, batches = 250;
  Loader l(config({"0.7", a.prefix, "0.3", b.prefix}, T, 7, int64_t(batches) * B));
  // Training documents are the first 90% of each dataset, validation the next 10%.
  const int32_t a_valid_first = a.docs[450].first, b_valid_first = b.docs[450].first;
  std::vector<int32_t> ids(size_t(B) * T), tg(ids.size());
  int64_t from_a = 0;
  for (int k = 0; k < batches; ++k) {
    l.next(B, ids.data(), tg.data());
    for (int s = 0; s < B; ++s) {
      int32_t t0 = ids[size_t(s * T)];
      from_a += t0 < 10'000'000;
      for (int t = 0; t < T; ++t) {
        int32_t v = ids[size_t(s * T + t)];
        EXPECT_TRUE(v < a_valid_first || (v >= 10'000'000 && v < b_valid_first)) << v;
      }
    }
  }
  EXPECT_NEAR(double(from_a) / (batches * B), 0.7, 0.002);

  ASSERT_NE(l.valid(), nullptr);
  ASSERT_GT(l.eval_batches_available(B), 0);
  for (int k = 0; k < l.eval_batches_available(B); ++k) {
    l.eval_batch(k, B, ids.data(), tg.data());
    for (int32_t v : ids)
      EXPECT_TRUE((v >= a_valid_first && v < 10'000'000) || v >= b_valid_first) << v;
  }
  // eval batches do not move the training position and are repeatable
  std::vector<int32_t> again(ids.size());
  l.eval_batch(0, B, ids.data(), tg.data());
  l.eval_batch(0, B, again.data(), tg.data());
  EXPECT_EQ(ids, again);
  EXPECT_EQ(l.state().position, int64_t(batches) * B);
}

TEST(Loader, WithoutTrainSamplesUsesOneEpochAndMissingValidationIsReported) {
  TempDir dir("gpt");
  auto a = write_unique(dir / "a", 50, 30, 0, 6);
  LoaderConfig cfg = config({a.prefix}, 8, 1, 0);
  cfg.split = parse_split("100,0,0");
  Loader l(cfg);
  EXPECT_EQ(l.valid(), nullptr);
  EXPECT_EQ(l.eval_batches_available(4), 0);
  std::vector<int32_t> ids(32), tg(32);
  EXPECT_THROW(l.eval_batch(0, 4, ids.data(), tg.data()), Error);
  GptDataset one(IndexedDataset::open(a.prefix), 0, 50, 8, 0, 1);
  EXPECT_EQ(l.train().size(), one.size());
  EXPECT_THROW(Loader(config({dir / "missing"}, 8, 1, 0)), Error);
}

}  // namespace
}  // namespace kiln

// data.mock (data/mock_source.h): uniform random ids in range, targets the next ids, the same
// stream for the same seed whatever the batch split, a position that restores exactly, and a
// fixed validation set apart from the training stream.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "kiln/data/mock_source.h"

namespace kiln {
namespace {

constexpr int V = 50, T = 16;

struct Batch {
  std::vector<int32_t> ids, targets;
  explicit Batch(int B) : ids(size_t(B) * T), targets(size_t(B) * T) {}
};

Batch draw(BatchSource& s, int B) {
  Batch b(B);
  s.next(B, b.ids.data(), b.targets.data());
  return b;
}

TEST(MockSource, IdsInRangeAndTargetsAreTheNextIds) {
  auto s = make_mock_source(V, T, 7);
  Batch b = draw(*s, 4);
  std::set<int32_t> seen;
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < T; ++t) {
      const int32_t id = b.ids[r * T + t], tg = b.targets[r * T + t];
      EXPECT_GE(id, 0);
      EXPECT_LT(id, V);
      EXPECT_GE(tg, 0);
      EXPECT_LT(tg, V);
      if (t + 1 < T) {
        EXPECT_EQ(tg, b.ids[r * T + t + 1]) << "row " << r << " t " << t;
      }
      seen.insert(id);
    }
  EXPECT_GT(seen.size(), size_t(V / 2));  // 64 draws over 50 ids: uniform, not constant
}

TEST(MockSource, SameSeedSameStreamWhateverTheBatchSplit) {
  auto a = make_mock_source(V, T, 7), b = make_mock_source(V, T, 7), c = make_mock_source(V, T, 8);
  Batch whole = draw(*a, 4);
  Batch first = draw(*b, 1), rest = draw(*b, 3);
  first.ids.insert(first.ids.end(), rest.ids.begin(), rest.ids.end());
  first.targets.insert(first.targets.end(), rest.targets.begin(), rest.targets.end());
  EXPECT_EQ(whole.ids, first.ids);
  EXPECT_EQ(whole.targets, first.targets);
  EXPECT_NE(whole.ids, draw(*c, 4).ids);  // another seed, another stream
  EXPECT_NE(whole.ids, draw(*a, 4).ids);  // and the stream moves on
}

TEST(MockSource, PositionRestoresExactly) {
  auto a = make_mock_source(V, T, 3);
  draw(*a, 5);
  const nlohmann::json at = a->state();
  Batch want = draw(*a, 2);
  auto b = make_mock_source(V, T, 3);
  b->set_state(at);
  Batch got = draw(*b, 2);
  EXPECT_EQ(want.ids, got.ids);
  EXPECT_EQ(want.targets, got.targets);
  EXPECT_THROW(b->set_state(nlohmann::json{{"position", 3}}), std::exception);
}

TEST(MockSource, ValidationIsFixedAndApartFromTraining) {
  auto s = make_mock_source(V, T, 3, 8);
  EXPECT_EQ(s->eval_batches_available(2), 4);
  EXPECT_EQ(s->eval_batches_available(16), 0);
  Batch v1(2), v2(2);
  s->eval_batch(1, 2, v1.ids.data(), v1.targets.data());
  draw(*s, 3);  // drawing training data does not move the validation set
  s->eval_batch(1, 2, v2.ids.data(), v2.targets.data());
  EXPECT_EQ(v1.ids, v2.ids);
  auto fresh = make_mock_source(V, T, 3, 8);
  Batch v0(2);
  fresh->eval_batch(0, 2, v0.ids.data(), v0.targets.data());
  EXPECT_NE(v0.ids, draw(*fresh, 2).ids);
  EXPECT_NE(v0.ids, v1.ids);
  EXPECT_THROW(s->eval_batch(4, 2, v1.ids.data(), v1.targets.data()), std::exception);
}

}  // namespace
}  // namespace kiln

// Embedding: cpu vs ref (bit-exact: both are copies and in-order sums), vocabulary shards vs the
// full table, backward vs double finite differences, repeated ids, determinism across thread
// counts.
#include "kiln/ops/embedding.h"

#include <cmath>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::kU;
using test::random_ids;
using test::random_vector;

struct Shape {
  int N, C, V;
};
// Small V forces repeated ids, which the backward must sum.
const Shape kShapes[] = {{1, 1, 1},    {7, 13, 3},  {13, 31, 97},     {97, 7, 5},
                         {31, 97, 13}, {5, 100, 1}, {2048, 256, 1000}};

TEST(Embedding, ForwardCpuMatchesRefExactly) {
  uint64_t seed = 1;
  for (auto [N, C, V] : kShapes)
    for (bool accumulate : {false, true}) {
      auto table = random_vector(int64_t(V) * C, ++seed);
      auto ids = random_ids(N, V, ++seed);
      auto out0 = random_vector(int64_t(N) * C, ++seed);
      auto want = out0, got = out0;
      ref::embedding_forward(want.data(), ids.data(), table.data(), N, C, accumulate);
      cpu::embedding_forward(got.data(), ids.data(), table.data(), N, C, accumulate);
      // A copy, or one fp32 addition per element: no freedom in the result.
      EXPECT_TRUE(test::bit_equal(got, want)) << "N=" << N << " C=" << C << " acc=" << accumulate;
    }
}

TEST(Embedding, BackwardCpuMatchesRefExactly) {
  uint64_t seed = 100;
  for (auto [N, C, V] : kShapes) {
    auto dout = random_vector(int64_t(N) * C, ++seed);
    auto ids = random_ids(N, V, ++seed);
    auto dtable0 = random_vector(int64_t(V) * C, ++seed);  // += contract
    auto want = dtable0, got = dtable0;
    ref::embedding_backward(want.data(), dout.data(), ids.data(), N, C);
    cpu::embedding_backward(got.data(), dout.data(), ids.data(), N, C);
    // The contract sums each row in order of n, so cpu must equal the serial loop bit for bit.
    EXPECT_TRUE(test::bit_equal(got, want)) << "N=" << N << " C=" << C << " V=" << V;
  }
}

// Vocabulary shards: rows [begin, begin+Vs) of the table. Summed over the shards, the forward is
// the full lookup and the backward the full scatter, bit for bit (one shard owns each id).
TEST(Embedding, ShardsAddUpToTheFullTable) {
  uint64_t seed = 200;
  for (auto [N, C, V] : kShapes) {
    auto table = random_vector(int64_t(V) * C, ++seed);
    auto dout = random_vector(int64_t(N) * C, ++seed);
    auto ids = random_ids(N, V, ++seed);
    std::vector<float> want(int64_t(N) * C), dwant(table.size(), 0.0f);
    cpu::embedding_forward(want.data(), ids.data(), table.data(), N, C, false);
    cpu::embedding_backward(dwant.data(), dout.data(), ids.data(), N, C);
    for (int shards : {1, 2, 3}) {
      std::vector<float> got(want.size(), 0.0f), part(want.size()), dgot(table.size(), 0.0f);
      for (int s = 0, begin = 0; s < shards; ++s) {
        const int Vs = V / shards + (s < V % shards ? 1 : 0);
        cpu::embedding_forward_shard(part.data(), ids.data(), table.data() + int64_t(begin) * C, N,
                                     C, begin, Vs);
        for (size_t i = 0; i < got.size(); ++i) got[i] += part[i];
        cpu::embedding_backward_shard(dgot.data() + int64_t(begin) * C, dout.data(), ids.data(), N,
                                      C, begin, Vs);
        begin += Vs;
      }
      EXPECT_TRUE(test::bit_equal(got, want)) << "N=" << N << " C=" << C << " shards=" << shards;
      EXPECT_TRUE(test::bit_equal(dgot, dwant)) << "N=" << N << " C=" << C << " shards=" << shards;
    }
  }
}

template <typename Backward>
void check_fd(Backward backward, int N, int C, int V, uint64_t seed) {
  auto table = random_vector(int64_t(V) * C, seed), g = random_vector(int64_t(N) * C, seed + 1);
  auto ids = random_ids(N, V, seed + 2);
  std::vector<float> dtable(table.size(), 0.0f);
  backward(dtable.data(), g.data(), ids.data(), N, C);

  auto td = test::to_double(table);
  auto loss = [&] {  // L = sum(out * g), out = table[ids] in double
    double s = 0.0;
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) s += td[int64_t(ids[n]) * C + c] * g[n * C + c];
    return s;
  };
  auto fd = test::fd_gradient(td, loss);
  // Each entry is a sum of at most N values in [-1, 1]: error <= (N + 2) kU N; FD ~1e-9.
  EXPECT_TRUE(test::all_close(dtable, fd, 0.0, (N + 2) * kU * N + 1e-8))
      << "N=" << N << " C=" << C << " V=" << V;
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  const Shape shapes[] = {{1, 1, 1}, {7, 13, 3}, {13, 5, 17}, {31, 3, 2}};
  uint64_t seed = 200;
  for (auto [N, C, V] : shapes) {
    check_fd(ref::embedding_backward, N, C, V, seed += 3);
    check_fd(cpu::embedding_backward, N, C, V, seed += 3);
  }
}

TEST(Embedding, BackwardIndependentOfThreadCount) {
  const int N = 2048, C = 257, V = 50;  // many repeats; C not a multiple of 16
  auto dout = random_vector(int64_t(N) * C, 1);
  auto ids = random_ids(N, V, 2);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    test::ThreadCount tc(threads);
    std::vector<float> dtable(int64_t(V) * C, 0.0f);
    cpu::embedding_backward(dtable.data(), dout.data(), ids.data(), N, C);
    results.push_back(dtable);
  }
  EXPECT_TRUE(test::bit_equal(results[0], results[1]));
  EXPECT_TRUE(test::bit_equal(results[0], results[2]));
}

}  // namespace
}  // namespace kiln::ops

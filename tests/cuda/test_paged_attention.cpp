// cuda::paged_attention and kv_cache_write against plain host loops over a random pool with
// shuffled block tables (this binary links kiln_cuda, not infer, so the reference is written here:
// row n, head h attends to positions 0..pos[n] of its sequence, softmax of q.k / sqrt(D)).
//
// Tolerances: the reference sums in double from the same (for bf16: rounded) inputs. float: fp32
// dots of length D and sums over up to pos+1 positions, tol_f32(pos + D). bf16: the GPU computes
// in fp32 from exact bf16 values, so the output's own rounding (one bf16 ulp) dominates:
// tol_bf16(1).
#include "kiln/cuda/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cuda_test_util.h"

namespace kiln::cuda {
namespace {

using test::expect_close;
using test::floats_of;
using test::gpu_from;
using test::randn;
using test::round_to;

constexpr int kBT = kPagedBlockTokens;

// The pool (num_blocks, layers, 2, kBT, kv_dim) on the host.
struct HostPool {
  int num_blocks, layers, kv_dim;
  std::vector<float> data;
  int64_t at(int blk, int layer, int kv, int off, int e) const {
    return (((int64_t(blk) * layers + layer) * 2 + kv) * kBT + off) * kv_dim + e;
  }
};

struct Case {
  int H, K, D, layers, layer;
  std::vector<int> pos;  // one per row
};

template <typename T>
void check_paged(const Case& c, uint64_t seed) {
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  const int N = int(c.pos.size()), KD = c.K * c.D, G = c.H / c.K;
  SCOPED_TRACE(testing::Message() << (kBf16 ? "bf16" : "float") << " H=" << c.H << " K=" << c.K
                                  << " D=" << c.D << " N=" << N);
  // Block tables: each row's blocks drawn from a shuffled permutation of the pool, unused entries
  // -1 (reading one would fault).
  int max_blocks = 0, used = 0;
  for (int p : c.pos) max_blocks = std::max(max_blocks, p / kBT + 1), used += p / kBT + 1;
  HostPool pool{used + 3, c.layers, KD, {}};
  pool.data = randn(size_t(pool.num_blocks) * c.layers * 2 * kBT * KD, seed);
  std::vector<int> perm(pool.num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed + 1);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int> tables(size_t(N) * max_blocks, -1);
  int next = 0;
  for (int n = 0; n < N; ++n)
    for (int i = 0; i <= c.pos[n] / kBT; ++i) tables[size_t(n) * max_blocks + i] = perm[next++];
  const int stride = (c.H + 2 * c.K) * c.D + 3;  // padded rows
  auto qkv = randn(size_t(N) * stride, seed + 2);
  if (kBf16) pool.data = round_to<bf16>(pool.data), qkv = round_to<bf16>(qkv);

  std::vector<float> want(size_t(N) * c.H * c.D);
  const double scale = 1.0 / std::sqrt(double(c.D));
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < c.H; ++h) {
      const int g = h / G;
      const float* q = &qkv[size_t(n) * stride + size_t(h) * c.D];
      std::vector<double> s(size_t(c.pos[n]) + 1);
      double m = -INFINITY;
      for (int t = 0; t <= c.pos[n]; ++t) {
        const int blk = tables[size_t(n) * max_blocks + t / kBT];
        double dot = 0;
        for (int d = 0; d < c.D; ++d)
          dot += double(q[d]) * pool.data[pool.at(blk, c.layer, 0, t % kBT, g * c.D + d)];
        s[t] = dot * scale;
        m = std::max(m, s[t]);
      }
      double l = 0;
      std::vector<double> acc(c.D, 0.0);
      for (int t = 0; t <= c.pos[n]; ++t) {
        const int blk = tables[size_t(n) * max_blocks + t / kBT];
        const double p = std::exp(s[t] - m);
        l += p;
        for (int d = 0; d < c.D; ++d)
          acc[d] += p * pool.data[pool.at(blk, c.layer, 1, t % kBT, g * c.D + d)];
      }
      for (int d = 0; d < c.D; ++d) want[(size_t(n) * c.H + h) * c.D + d] = float(acc[d] / l);
    }

  auto st = streams().compute.get();
  auto dpool = gpu_from<T>(pool.data);
  auto dqkv = gpu_from<T>(qkv);
  auto dtables = test::to_gpu(tables);
  auto dpos = test::to_gpu(c.pos);
  auto out = test::poisoned<T>(int64_t(N) * c.H * c.D);
  paged_attention<T>(out.data(), dqkv.data(), stride,
                     DevicePagedCache<T>{dpool.data(), c.layers, KD}, c.layer, dtables.data(),
                     max_blocks, dpos.data(), N, c.H, c.K, c.D, st);
  const int max_pos = *std::max_element(c.pos.begin(), c.pos.end());
  expect_close(floats_of(out), want, kBf16 ? test::tol_bf16(1) : test::tol_f32(max_pos + c.D),
               "out");
}

TEST(CudaPagedAttention, MatchesHostLoop) {
  KILN_REQUIRE_GPU();
  // Positions: first in a block, a block boundary, one split exactly full (255), one past it
  // (256: a second split of one position), and three splits.
  const Case gqa{8, 2, 64, 2, 1, {0, 17, 255, 256, 700}};
  check_paged<float>(gqa, 1);
  check_paged<bf16>(gqa, 2);
  const Case odd{3, 1, 40, 1, 0, {5, 600, 31, 1, 300}};  // MQA, D not a power of two
  check_paged<float>(odd, 3);
  check_paged<bf16>(odd, 4);
  const Case wide{16, 2, 128, 1, 0, {1000, 3}};  // G = 8 heads per kv head, D = 128
  check_paged<float>(wide, 5);
  check_paged<bf16>(wide, 6);
  const Case short_ctx{4, 4, 256, 1, 0, {15, 0, 9}};  // one split per row: no merge, D = 256
  check_paged<float>(short_ctx, 7);
}

template <typename T>
void check_write(uint64_t seed) {
  const int H = 4, K = 2, D = 24, layers = 3, layer = 2, KD = K * D, num_blocks = 5, N = 6;
  const int stride = (H + 2 * K) * D + 5;
  HostPool pool{num_blocks, layers, KD, {}};
  pool.data = round_to<bf16>(randn(size_t(num_blocks) * layers * 2 * kBT * KD, seed));
  const auto qkv = round_to<bf16>(randn(size_t(N) * stride, seed + 1));
  // Distinct slots scattered over blocks and offsets; one padding row (-1).
  const std::vector<int> slots = {3 * kBT + 15, 0, -1, 4 * kBT + 7, 1 * kBT + 1, 3 * kBT + 0};
  auto dpool = gpu_from<T>(pool.data);
  auto dqkv = gpu_from<T>(qkv);
  auto dslots = test::to_gpu(slots);
  kv_cache_write<T>(DevicePagedCache<T>{dpool.data(), layers, KD}, layer, dqkv.data(), stride, H, K,
                    D, dslots.data(), N, streams().compute.get());
  auto want = pool.data;
  for (int n = 0; n < N; ++n) {
    if (slots[n] < 0) continue;
    for (int e = 0; e < KD; ++e) {
      want[pool.at(slots[n] / kBT, layer, 0, slots[n] % kBT, e)] =
          qkv[size_t(n) * stride + H * D + e];
      want[pool.at(slots[n] / kBT, layer, 1, slots[n] % kBT, e)] =
          qkv[size_t(n) * stride + (H + K) * D + e];
    }
  }
  // Copies are exact: every element, written or not, must match bit for bit.
  expect_close(floats_of(dpool), want, {0.0, 0.0}, "pool");
}

TEST(CudaPagedAttention, KvCacheWriteRoundTrip) {
  KILN_REQUIRE_GPU();
  check_write<float>(11);
  check_write<bf16>(12);
}

TEST(CudaPagedAttention, RejectsBadShapes) {
  // Host-side checks, no GPU needed.
  DevicePagedCache<float> cache{nullptr, 2, 128};
  EXPECT_THROW(paged_attention<float>(nullptr, nullptr, 1024, cache, 0, nullptr, 4, nullptr, 1, 8,
                                      2, 32, nullptr),
               Error);  // kv_dim != K*D
  EXPECT_THROW(paged_attention<float>(nullptr, nullptr, 1024, cache, 2, nullptr, 4, nullptr, 1, 8,
                                      2, 64, nullptr),
               Error);  // layer out of range
  EXPECT_THROW(kv_cache_write<float>(cache, 0, nullptr, 10, 8, 2, 64, nullptr, 1, nullptr), Error);
}

}  // namespace
}  // namespace kiln::cuda

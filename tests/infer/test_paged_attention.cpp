// paged_attention against plain softmax attention in double: random K/V written into a paged
// cache (blocks scattered by interleaving two sequences), every head size the kernel has a
// path for (64 and 128 in registers, 16-multiples, others), grouped-query heads, contexts
// across the block (16) and split (256) boundaries.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kiln/infer/kv_cache.h"
#include "kiln/infer/paged_attention.h"

namespace kiln {
namespace {

void check(int H, int K, int D, int len) {
  const int L = 1, KD = K * D;
  KvCache cache({L, KD, 2 * ((len + kBlockTokens - 1) / kBlockTokens) + 2});
  const KvCache::SeqId a = cache.create(), other = cache.create();
  std::mt19937 rng(H * 1000 + D * 7 + len);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> keys(size_t(len) * KD), values(size_t(len) * KD);
  for (auto& v : keys) v = g(rng);
  for (auto& v : values) v = g(rng);
  // One token at a time into both sequences, so `a`'s blocks are not contiguous.
  for (int p = 0; p < len; ++p) {
    for (KvCache::SeqId s : {a, other}) {
      cache.prepare_append(s, 1);
      const auto [blk, off] = cache.slot(s, p);
      for (int j = 0; j < KD; ++j) {
        cache.k(blk, 0)[off * KD + j] = s == a ? keys[size_t(p) * KD + j] : 9.0f;
        cache.v(blk, 0)[off * KD + j] = s == a ? values[size_t(p) * KD + j] : 9.0f;
      }
      const int32_t tok = 0;
      cache.commit(s, &tok, 1);
    }
  }
  // Two query rows: the last position, and one in the middle.
  const int positions[2] = {len - 1, len / 2};
  std::vector<float> q(size_t(2) * H * D);
  for (auto& v : q) v = g(rng);
  PagedRow rows[2] = {{cache.block_table(a).data(), positions[0]},
                      {cache.block_table(a).data(), positions[1]}};
  std::vector<float> out(size_t(2) * H * D);
  paged_attention(out.data(), q.data(), H * D, cache, 0, rows, 2, H, K, D);
  for (int r = 0; r < 2; ++r)
    for (int h = 0; h < H; ++h) {
      const int kvh = h / (H / K);
      const float* qh = &q[(size_t(r) * H + h) * D];
      std::vector<double> s(positions[r] + 1);
      double mx = -INFINITY, sum = 0;
      for (int t = 0; t <= positions[r]; ++t) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += double(qh[d]) * keys[size_t(t) * KD + kvh * D + d];
        s[t] = dot / std::sqrt(double(D));
        mx = std::max(mx, s[t]);
      }
      for (double& v : s) sum += (v = std::exp(v - mx));
      for (int d = 0; d < D; ++d) {
        double want = 0;
        for (int t = 0; t <= positions[r]; ++t)
          want += s[t] / sum * values[size_t(t) * KD + kvh * D + d];
        ASSERT_NEAR(out[(size_t(r) * H + h) * D + d], want, 2e-5 * (1 + std::fabs(want)))
            << "H=" << H << " K=" << K << " D=" << D << " len=" << len << " row " << r
            << " head " << h << " d " << d;
      }
    }
}

TEST(PagedAttention, MatchesSoftmaxAttention) {
  for (int D : {64, 128, 32, 24})
    for (int len : {1, 5, 16, 17, 100, 256, 257, 600}) check(6, 2, D, len);
  check(4, 4, 64, 40);  // multi-head (no grouping)
}

}  // namespace
}  // namespace kiln

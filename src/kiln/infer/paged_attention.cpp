#include "kiln/infer/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/core/parallel.h"
#include "kiln/ops/cpu/vec16.h"

namespace kiln {

namespace vec = ops::cpu::vec;
static_assert(kBlockTokens == vec::kL, "one cache block of scores is one 16-lane vector");
static_assert(kSplitTokens % kBlockTokens == 0, "splits hold whole blocks");

namespace {

// Lane t of the result = the sum of p[t]'s 16 lanes: a transpose-and-add tree (15 pairs of
// shuffles) instead of 16 horizontal reductions.
vec::v16 sum_lanes16(const vec::v16 p[16]) {
  vec::v16 q[8], r[4], s[2];
  for (int i = 0; i < 8; ++i)
    q[i] = __builtin_shufflevector(p[2 * i], p[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19,
                                   20, 21, 22, 23) +
           __builtin_shufflevector(p[2 * i], p[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26,
                                   27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    r[i] = __builtin_shufflevector(q[2 * i], q[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19,
                                   24, 25, 26, 27) +
           __builtin_shufflevector(q[2 * i], q[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22,
                                   23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    s[i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21,
                                   24, 25, 28, 29) +
           __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22,
                                   23, 26, 27, 30, 31);
  return __builtin_shufflevector(s[0], s[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                 30) +
         __builtin_shufflevector(s[0], s[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29,
                                 31);
}

// The block's 16 scores q . k_t (t >= n: -inf).
vec::v16 block_scores(const float* q, const float* kb, int KD, int D, int n, float scale) {
  alignas(64) float s[kBlockTokens];
  if (D % vec::kL == 0) {
    vec::v16 part[kBlockTokens];
    for (int t = 0; t < kBlockTokens; ++t) {
      part[t] = vec::v16{};
      if (t >= n) continue;
      const float* kt = kb + t * KD;
      for (int d = 0; d < D; d += vec::kL) part[t] += vec::load(q + d) * vec::load(kt + d);
    }
    vec::store(s, sum_lanes16(part) * scale);
  } else {
    for (int t = 0; t < n; ++t) {
      const float* kt = kb + t * KD;
      float dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int d = 0; d < D; ++d) dot += q[d] * kt[d];
      s[t] = dot * scale;
    }
  }
  for (int t = n; t < kBlockTokens; ++t) s[t] = -INFINITY;
  return vec::load(s);
}

// a (D) = a * corr + sum_t p[t] v_t, held in registers for the head sizes models use.
template <int D>
void accumulate_v(float* a, float corr, const float* p, const float* vb, int KD, int n) {
  vec::v16 acc[D / vec::kL];
  for (int c = 0; c < D / vec::kL; ++c) acc[c] = vec::load(a + c * vec::kL) * corr;
  for (int t = 0; t < n; ++t) {
    const vec::v16 pt = vec::splat(p[t]);
    for (int c = 0; c < D / vec::kL; ++c) acc[c] += pt * vec::load(vb + t * KD + c * vec::kL);
  }
  for (int c = 0; c < D / vec::kL; ++c) vec::store(a + c * vec::kL, acc[c]);
}

void accumulate_v(float* a, float corr, const float* p, const float* vb, int KD, int n, int D) {
  if (D == 64) return accumulate_v<64>(a, corr, p, vb, KD, n);
  if (D == 128) return accumulate_v<128>(a, corr, p, vb, KD, n);
#pragma omp simd
  for (int d = 0; d < D; ++d) a[d] *= corr;
  for (int t = 0; t < n; ++t) {
    const float pt = p[t];
    const float* vt = vb + t * KD;
#pragma omp simd
    for (int d = 0; d < D; ++d) a[d] += pt * vt[d];
  }
}

// One (row, kv head, split): the `group` query heads sharing the kv head, over positions
// [begin, end). Writes per head the running max m, the sum l and the unnormalized acc (D).
void attend_split(float* part, const float* q, int group, int D, float scale, const KvCache& cache,
                  int layer, const int* blocks, int kv_off, int begin, int end) {
  const int KD = cache.shape().kv_dim;
  float* acc = part;  // (group, D + 2): per head acc (D), then the running max m and sum l
  for (int g = 0; g < group; ++g) {
    std::fill(acc + g * (D + 2), acc + g * (D + 2) + D, 0.0f);
    acc[g * (D + 2) + D] = -INFINITY;
    acc[g * (D + 2) + D + 1] = 0;
  }
  for (int b0 = begin; b0 < end; b0 += kBlockTokens) {
    const int blk = blocks[b0 / kBlockTokens], n = std::min(kBlockTokens, end - b0);
    const float* kb = cache.k(blk, layer) + kv_off;
    const float* vb = cache.v(blk, layer) + kv_off;
    for (int g = 0; g < group; ++g) {
      const vec::v16 sv = block_scores(q + g * D, kb, KD, D, n, scale);
      float* a = acc + g * (D + 2);
      float &mg = a[D], &lg = a[D + 1];
      const float m_new = std::max(mg, vec::hmax(sv));
      const float corr = std::exp(mg - m_new);  // 0 on the first tile (m = -inf)
      const vec::v16 p = vec::expv(sv - vec::splat(m_new));
      alignas(64) float ps[kBlockTokens];
      vec::store(ps, p);
      lg = lg * corr + vec::hsum(p);
      mg = m_new;
      accumulate_v(a, corr, ps, vb, KD, n, D);
    }
  }
}

}  // namespace

void paged_attention(float* out, const float* qkv, int stride, const KvCache& cache, int layer,
                     const PagedRow* rows, int N, int H, int K, int D) {
  const int group = H / K;
  const float scale = 1.0f / std::sqrt(float(D));
  // Task list: (row, kv head, split), splits of a row contiguous.
  std::vector<int> first(N + 1);  // first task of each row
  first[0] = 0;
  for (int r = 0; r < N; ++r) {
    const int splits = rows[r].pos / kSplitTokens + 1;
    first[r + 1] = first[r] + K * splits;
  }
  const int tasks = first[N];
  std::vector<float> parts(size_t(tasks) * group * (D + 2));
  std::vector<int> task_row(tasks);
  for (int r = 0; r < N; ++r)
    for (int t = first[r]; t < first[r + 1]; ++t) task_row[t] = r;
  parallel_for(tasks, [&](int64_t t) {
    const int r = task_row[t], local = int(t) - first[r];
    const int splits = rows[r].pos / kSplitTokens + 1;
    const int kvh = local / splits, sp = local % splits;
    const int begin = sp * kSplitTokens, end = std::min(rows[r].pos + 1, begin + kSplitTokens);
    attend_split(&parts[size_t(t) * group * (D + 2)], qkv + size_t(r) * stride + kvh * group * D,
                 group, D, scale, cache, layer, rows[r].blocks, kvh * D, begin, end);
  });
  // Merge the splits of each (row, head) by log-sum-exp, in split order.
  parallel_for(int64_t(N) * K, [&](int64_t i) {
    const int r = int(i / K), kvh = int(i % K);
    const int splits = rows[r].pos / kSplitTokens + 1;
    for (int g = 0; g < group; ++g) {
      float M = -INFINITY;
      for (int sp = 0; sp < splits; ++sp) {
        const float* p = &parts[(size_t(first[r] + kvh * splits + sp) * group + g) * (D + 2)];
        M = std::max(M, p[D]);
      }
      float* o = out + size_t(r) * H * D + (kvh * group + g) * D;
      std::fill(o, o + D, 0.0f);
      float L = 0;
      for (int sp = 0; sp < splits; ++sp) {
        const float* p = &parts[(size_t(first[r] + kvh * splits + sp) * group + g) * (D + 2)];
        const float w = std::exp(p[D] - M);
        L += w * p[D + 1];
        for (int d = 0; d < D; ++d) o[d] += w * p[d];
      }
      const float inv = 1.0f / L;
      for (int d = 0; d < D; ++d) o[d] *= inv;
    }
  });
}

}  // namespace kiln

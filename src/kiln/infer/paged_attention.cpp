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
      const float* qg = q + g * D;
      alignas(64) float s[kBlockTokens];
      for (int t = 0; t < kBlockTokens; ++t) {
        if (t >= n) {
          s[t] = -INFINITY;
          continue;
        }
        const float* kt = kb + t * KD;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += qg[d] * kt[d];
        s[t] = dot * scale;
      }
      float* a = acc + g * (D + 2);
      float &mg = a[D], &lg = a[D + 1];
      vec::v16 sv = vec::load(s);
      const float m_new = std::max(mg, vec::hmax(sv));
      const float corr = std::exp(mg - m_new);  // 0 on the first tile (m = -inf)
      vec::v16 p = vec::expv(sv - vec::splat(m_new));
      vec::store(s, p);
      lg = lg * corr + vec::hsum(p);
      mg = m_new;
#pragma omp simd
      for (int d = 0; d < D; ++d) a[d] *= corr;
      for (int t = 0; t < n; ++t) {
        const float pt = s[t];
        const float* vt = vb + t * KD;
#pragma omp simd
        for (int d = 0; d < D; ++d) a[d] += pt * vt[d];
      }
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

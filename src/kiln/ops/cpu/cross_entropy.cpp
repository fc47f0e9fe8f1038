// Fused LM head + cross-entropy on the CPU: per chunk of rows, the three products are OpenBLAS
// sgemms and the softmax is a vectorized pass over the chunk's logits, in place.
//
// Napkin math, N=2048 tokens, C=256, V=8192:
//   forward  logits = h W^T:                    2*N*V*C = 8.6 GFLOP
//   backward dh = dlogits W, dW += dlogits^T h:  2 x 8.6 = 17.2 GFLOP
//   softmax: N*V = 16.8 M exps (~1 ms vectorized, ~30 ms with scalar expf).
//   bytes: W 8 MB and dW 8 MB are read (dW also written) once per chunk; logits 8 MB per chunk
//   of 256 rows stay in L2/L3 between the sgemm that writes them and the two that read them.
//   -> compute bound on the sgemms: 25.8 GFLOP at ~150-250 GFLOP/s on 2 SPR cores ~ 100-170 ms.
#include "kiln/ops/cross_entropy.h"
#include "kiln/ops/cpu/vec16.h"
#include "kiln/ops/matmul_bf16.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {

using namespace vec;

float row_max(const float* x, int V) {
  v16 m = splat(-INFINITY);
  int v = 0;
  for (; v + kL <= V; v += kL) {
    const v16 xv = load(x + v);
    m = xv > m ? xv : m;
  }
  float r = -INFINITY;
  for (int i = 0; i < kL; ++i) r = std::max(r, m[i]);
  for (; v < V; ++v) r = std::max(r, x[v]);
  return r;
}

// Returns sum_v e^(x_v - m); when `keep`, also overwrites x_v with e^(x_v - m).
float exp_sum(float* x, int V, float m, bool keep) {
  v16 s{};
  int v = 0;
  for (; v + kL <= V; v += kL) {
    const v16 e = expv(load(x + v) - m);
    s += e;
    if (keep) store(x + v, e);
  }
  float r = 0.0f;
  for (int i = 0; i < kL; ++i) r += s[i];
  for (; v < V; ++v) {
    const float e = std::exp(x[v] - m);
    r += e;
    if (keep) x[v] = e;
  }
  return r;
}

// Rows per chunk: up to 256, fewer for big vocabularies so the chunk's logits stay ~8 MB
// (2^21 floats), but at least 32 so the sgemms keep a useful inner dimension.
int chunk_rows(int V) {
  return std::clamp((1 << 21) / std::max(V, 1), 32, 256);
}

// The chunked loop, with the three GEMMs supplied by the caller (fp32 or bf16):
//   logits_of(nc, h_chunk, logits)   logits (nc,V) = h_chunk (nc,C) @ W^T
//   grads_of(nc, h_chunk, dlogits, dh_chunk)   dh_chunk = dlogits @ W;  dW += dlogits^T @ h_chunk
// With a vocabulary shard, each row's max and then its exp-sum and target logit are combined over
// the ranks between three parallel passes; without, one pass does all of a row.
template <typename Logits, typename Grads>
void cross_entropy_chunks(float* losses, float* dh, float* dw, const float* h, const int* targets,
                          int N, int C, int V, float grad_scale, const VocabShard* shard,
                          Logits&& logits_of, Grads&& grads_of) {
  KILN_CHECK(N >= 0 && C > 0 && V > 0, "cross_entropy", "bad shape N=", N, " C=", C, " V=", V);
  const int v0 = shard ? shard->begin : 0, total = shard ? shard->total : V;
  KILN_CHECK(v0 >= 0 && v0 + V <= total, "cross_entropy", "vocabulary shard [", v0, ", ", v0 + V,
             ") does not fit in a vocabulary of ", total);
  // Targets come from data: check them here, outside the parallel region (no throwing there).
  for (int n = 0; n < N; ++n)
    KILN_CHECK(targets[n] < total, "cross_entropy", "target ", targets[n], " at row ", n,
               " is outside the vocabulary of ", total, ": the data was tokenized with another ",
               "tokenizer, or the model's vocab_size is wrong");
  const bool train = dh != nullptr;
  // Chunks follow the whole vocabulary, so every rank of a shard makes the same reduce calls.
  const int rows = chunk_rows(total);
  thread_local std::vector<float> buf, stats;
  buf.resize(size_t(std::min(rows, N)) * V);
  stats.resize(size_t(std::min(rows, N)) * 3);
  float* logits = buf.data();  // (rows, V): logits, then probabilities, then dlogits
  // The row's loss and (when training) dlogits = (softmax - onehot(y)) * grad_scale, from the
  // e^(x - m) left in x; y is the target's column here, -1 when another rank holds it.
  auto finish = [&](float* x, float& loss, int y, float m, float sum, float logit_y) {
    loss = m + std::log(sum) - logit_y;
    if (!train) return;
    const float k = grad_scale / sum;
    for (int v = 0; v < V; ++v) x[v] *= k;
    if (y >= 0) x[y] -= grad_scale;
  };
  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    const float* hc = h + int64_t(n0) * C;
    logits_of(nc, hc, logits);
    auto ignored = [&](int64_t r) {  // no loss, zero gradient row (so dh = 0 and dW gets nothing)
      if (targets[n0 + r] >= 0) return false;
      losses[n0 + r] = 0.0f;
      if (train) std::fill(logits + r * V, logits + (r + 1) * V, 0.0f);
      return true;
    };
    if (!shard) {
      parallel_for(nc, [&](int64_t r) {
        if (ignored(r)) return;
        float* x = logits + r * V;
        const int y = targets[n0 + r];
        const float m = row_max(x, V), logit_y = x[y];
        finish(x, losses[n0 + r], y, m, exp_sum(x, V, m, train), logit_y);
      });
    } else {
      float* mx = stats.data();       // (nc) row maxima
      float* st = stats.data() + nc;  // (nc, 2) exp-sums and target logits
      parallel_for(
          nc, [&](int64_t r) { mx[r] = targets[n0 + r] < 0 ? 0.0f : row_max(logits + r * V, V); });
      shard->reduce(mx, nc, true);
      parallel_for(nc, [&](int64_t r) {
        float* x = logits + r * V;
        const int y = targets[n0 + r] - v0;
        const bool mine = targets[n0 + r] >= 0 && y < V && y >= 0;
        st[2 * r + 1] = mine ? x[y] : 0.0f;
        st[2 * r] = targets[n0 + r] < 0 ? 0.0f : exp_sum(x, V, mx[r], train);
      });
      shard->reduce(st, 2 * nc, false);
      parallel_for(nc, [&](int64_t r) {
        if (ignored(r)) return;
        const int y = targets[n0 + r] - v0;
        finish(logits + r * V, losses[n0 + r], y >= 0 && y < V ? y : -1, mx[r], st[2 * r],
               st[2 * r + 1]);
      });
    }
    if (!train) continue;
    grads_of(nc, hc, logits, dh + int64_t(n0) * C);
  }
}

void fp32_chunks(float* losses, float* dh, float* dw, const float* h, const float* w,
                 const int* targets, int N, int C, int V, float grad_scale,
                 const VocabShard* shard) {
  cross_entropy_chunks(
      losses, dh, dw, h, targets, N, C, V, grad_scale, shard,
      [&](int nc, const float* hc, float* logits) {
        // logits (nc,V) = h_chunk (nc,C) @ W^T, W (V,C)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nc, V, C, 1.0f, hc, C, w, C, 0.0f,
                    logits, V);
      },
      [&](int nc, const float* hc, const float* dlogits, float* dhc) {
        // dh (nc,C) = dlogits (nc,V) @ W (V,C), overwritten.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nc, C, V, 1.0f, dlogits, V, w, C,
                    0.0f, dhc, C);
        // dW (V,C) += dlogits^T (V,nc) @ h_chunk (nc,C); none for a frozen head.
        if (dw)
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, nc, 1.0f, dlogits, V, hc, C,
                      1.0f, dw, C);
      });
}

void bf16_chunks(float* losses, float* dh, float* dw, const float* h, const uint16_t* w,
                 const int* targets, int N, int C, int V, float grad_scale,
                 const VocabShard* shard) {
  std::vector<uint16_t> hb, gb;  // the chunk's h and dlogits in bf16
  cross_entropy_chunks(
      losses, dh, dw, h, targets, N, C, V, grad_scale, shard,
      [&](int nc, const float* hc, float* logits) {
        hb.resize(size_t(nc) * C);
        f32_to_bf16(hb.data(), hc, int64_t(nc) * C);
        gemm_bf16(logits, hb.data(), w, nc, V, C, false, true, 1.0f, 0.0f);
      },
      [&](int nc, const float*, const float* dlogits, float* dhc) {
        gb.resize(size_t(nc) * V);
        f32_to_bf16(gb.data(), dlogits, int64_t(nc) * V);
        gemm_bf16(dhc, gb.data(), w, nc, C, V, false, false, 1.0f, 0.0f);
        if (dw) gemm_bf16(dw, gb.data(), hb.data(), V, C, nc, true, false, 1.0f, 1.0f);
      });
}

}  // namespace

void lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h, const float* w,
                           const int* targets, int N, int C, int V, float grad_scale) {
  fp32_chunks(losses, dh, dw, h, w, targets, N, C, V, grad_scale, nullptr);
}

void lm_head_cross_entropy_bf16(float* losses, float* dh, float* dw, const float* h,
                                const uint16_t* w, const int* targets, int N, int C, int V,
                                float grad_scale) {
  bf16_chunks(losses, dh, dw, h, w, targets, N, C, V, grad_scale, nullptr);
}

void lm_head_cross_entropy_shard(float* losses, float* dh, float* dw, const float* h,
                                 const float* w, const int* targets, int N, int C, int V,
                                 float grad_scale, const VocabShard& shard) {
  fp32_chunks(losses, dh, dw, h, w, targets, N, C, V, grad_scale, &shard);
}

void lm_head_cross_entropy_bf16_shard(float* losses, float* dh, float* dw, const float* h,
                                      const uint16_t* w, const int* targets, int N, int C, int V,
                                      float grad_scale, const VocabShard& shard) {
  bf16_chunks(losses, dh, dw, h, w, targets, N, C, V, grad_scale, &shard);
}

}  // namespace kiln::ops::cpu

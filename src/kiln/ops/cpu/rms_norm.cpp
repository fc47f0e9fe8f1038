// RMSNorm over rows of C channels, fp32 statistics. Forward and backward are one pass over each
// row; rows are split across the pool.
#include "kiln/ops/rms_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {

// dw sums over rows. To be deterministic whatever the thread count, rows are cut into chunks
// that depend on N alone; each chunk sums into its own partial row and the partials are added
// in chunk order. At most kMaxChunks partial rows of C floats (256 x C x 4 bytes).
constexpr int64_t kMinChunkRows = 32, kMaxChunks = 256;
int64_t chunk_rows(int N) {
  return std::max<int64_t>(kMinChunkRows, (N + kMaxChunks - 1) / kMaxChunks);
}

// Row kernels take raw pointers: with the same loops inlined into a parallel lambda, GCC 12
// vectorizes the `omp simd reduction` loops with gathers (several times slower).
void forward_row(float* out, float* rstd, const float* x, const float* w, int C, float eps) {
  float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
  for (int c = 0; c < C; ++c) ss += x[c] * x[c];
  const float r = 1.0f / std::sqrt(ss / float(C) + eps);
  *rstd = r;
#pragma omp simd
  for (int c = 0; c < C; ++c) out[c] = w[c] * (x[c] * r);  // Hugging Face's order
}

// dx_i += r (g_i - x_i r^2 sum_j(g_j x_j) / C) with g = dout * w;  dw_i += dout_i x_i r.
void backward_row(float* dx, float* dw, const float* dout, const float* x, const float* w, float r,
                  int C) {
  float gx = 0.0f;
#pragma omp simd reduction(+ : gx)
  for (int c = 0; c < C; ++c) gx += dout[c] * w[c] * x[c];
  const float coef = r * r * gx / float(C);
#pragma omp simd
  for (int c = 0; c < C; ++c) {
    dx[c] += r * (dout[c] * w[c] - x[c] * coef);
    dw[c] += dout[c] * (x[c] * r);
  }
}

}  // namespace

void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                      float eps) {
  parallel_ranges(N, std::max<int64_t>(1, 4096 / std::max(C, 1)), [=](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) forward_row(out + n * C, rstd + n, x + n * C, w, C, eps);
  });
}

void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int64_t rows = chunk_rows(N), chunks = (N + rows - 1) / rows;
  std::vector<float> partial(chunks * C, 0.0f);  // (chunks, C)
  float* partial_data = partial.data();
  parallel_for(chunks, [=](int64_t k) {
    const int64_t n1 = std::min<int64_t>(N, (k + 1) * rows);
    for (int64_t n = k * rows; n < n1; ++n)
      backward_row(dx + n * C, partial_data + k * C, dout + n * C, x + n * C, w, rstd[n], C);
  });
  // Partials summed in chunk order (chunks x C adds: too few to be worth the pool).
  std::vector<float> total(partial.begin(), partial.begin() + C);
  for (int64_t k = 1; k < chunks; ++k) {
    const float* part = partial_data + k * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) total[c] += part[c];
  }
  if (!dw) return;  // a frozen weight
#pragma omp simd
  for (int c = 0; c < C; ++c) dw[c] += total[c];
}

}  // namespace kiln::ops::cpu

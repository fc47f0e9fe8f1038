// LayerNorm over rows of C channels (biased variance, fp32 statistics, two-pass so a large mean
// does not cancel the variance away). Rows are split across the pool.
#include "kiln/ops/layer_norm.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {

// dw and db sum over rows. To be deterministic whatever the thread count, rows are cut into
// chunks that depend on N alone; each chunk sums into its own partial rows and the partials
// are added in chunk order. At most kMaxChunks x 2C partial floats.
constexpr int64_t kMinChunkRows = 32, kMaxChunks = 256;
int64_t chunk_rows(int N) {
  return std::max<int64_t>(kMinChunkRows, (N + kMaxChunks - 1) / kMaxChunks);
}

// Row kernels take raw pointers: with the same loops inlined into a parallel lambda, GCC 12
// vectorizes the `omp simd reduction` loops with gathers (several times slower).
void forward_row(float* out, float* mean, float* rstd, const float* x, const float* w,
                 const float* b, int C, float eps) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < C; ++c) s += x[c];
  const float mu = s / float(C);
  float var = 0.0f;
#pragma omp simd reduction(+ : var)
  for (int c = 0; c < C; ++c) var += (x[c] - mu) * (x[c] - mu);
  const float r = 1.0f / std::sqrt(var / float(C) + eps);
  *mean = mu;
  *rstd = r;
#pragma omp simd
  for (int c = 0; c < C; ++c) out[c] = (x[c] - mu) * r * w[c] + b[c];
}

// With xhat = (x - mean) rstd and g = dout * w:
//   dx += rstd (g - mean(g) - xhat mean(g xhat)),  dw += dout xhat,  db += dout.
void backward_row(float* dx, float* dw, float* db, const float* dout, const float* x,
                  const float* w, float mu, float r, int C) {
  float g_sum = 0.0f, gx_sum = 0.0f;
#pragma omp simd reduction(+ : g_sum, gx_sum)
  for (int c = 0; c < C; ++c) {
    const float g = dout[c] * w[c];
    g_sum += g;
    gx_sum += g * ((x[c] - mu) * r);
  }
  const float g_mean = g_sum / float(C), gx_mean = gx_sum / float(C);
#pragma omp simd
  for (int c = 0; c < C; ++c) {
    const float xhat = (x[c] - mu) * r;
    dx[c] += r * (dout[c] * w[c] - g_mean - xhat * gx_mean);
    dw[c] += dout[c] * xhat;
    db[c] += dout[c];
  }
}

}  // namespace

void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C, float eps) {
  parallel_ranges(N, std::max<int64_t>(1, 4096 / std::max(C, 1)), [=](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      forward_row(out + n * C, mean + n, rstd + n, x + n * C, w, b, C, eps);
  });
}

void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int64_t rows = chunk_rows(N), chunks = (N + rows - 1) / rows;
  std::vector<float> partial(chunks * 2 * C, 0.0f);  // (chunks, 2, C): dw then db
  float* partial_data = partial.data();
  parallel_for(chunks, [=](int64_t k) {
    float* dw_k = partial_data + k * 2 * C;
    const int64_t n1 = std::min<int64_t>(N, (k + 1) * rows);
    for (int64_t n = k * rows; n < n1; ++n)
      backward_row(dx + n * C, dw_k, dw_k + C, dout + n * C, x + n * C, w, mean[n], rstd[n], C);
  });
  // Partials summed in chunk order (chunks x 2C adds: too few to be worth the pool).
  std::vector<float> total(partial.begin(), partial.begin() + 2 * C);
  for (int64_t k = 1; k < chunks; ++k) {
    const float* part = partial_data + k * 2 * C;
#pragma omp simd
    for (int c = 0; c < 2 * C; ++c) total[c] += part[c];
  }
  if (!dw || !db) return;  // frozen weights
#pragma omp simd
  for (int c = 0; c < C; ++c) {
    dw[c] += total[c];
    db[c] += total[C + c];
  }
}

}  // namespace kiln::ops::cpu

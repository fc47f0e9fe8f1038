// RMSNorm and LayerNorm on the GPU (contracts: ops/rms_norm.h, ops/layer_norm.h).
//
// Forward and the dx part of backward: one warp per row, fp32 statistics from a warp butterfly.
// Each pass re-reads the row (LayerNorm forward reads it three times: mean, variance around the
// mean, output); the row is hot in L1, so DRAM sees about one read of x per kernel.
//
// Weight gradients (dw, db) without float atomics: a second kernel tiles the columns (32 lanes x
// V) and cuts the rows into chunks fixed by N and C alone; each block sums its chunk's rows in a
// fixed order into a scratch row of partials, and a third kernel adds the partials to dw/db in
// chunk order. Cost: x and dout are read a second time (6 passes over N*C instead of 4), plus
// chunks*C floats of scratch (about 1024 blocks' worth, a few MiB) written and read once.
#include <algorithm>
#include <initializer_list>

#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

using kern::kWarp;
using kern::load_vec;
using kern::store_vec;
using kern::warp_sum;

template <typename T>
constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load

constexpr int kRowsPerBlock = 4;  // row kernels: one warp per row, 4 warps per block
constexpr int kWgRows = 8;        // weight-gradient kernel: row walkers (threadIdx.y) per block
constexpr int kRedY = 32;         // partial-sum kernel: chunk walkers (threadIdx.y) per block

unsigned row_blocks(int N) {
  return unsigned((N + kRowsPerBlock - 1) / kRowsPerBlock);
}

// ---- forward ----

// out (N,C) = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps); rstd (N) saved when not null.
template <typename T, int V>
__global__ void rms_norm_forward_kernel(T* out, float* rstd, const T* x, const float* w, int N,
                                        int C, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (row >= N) return;  // the whole warp leaves; no block-wide synchronization below
  const int64_t base = int64_t(row) * C;
  const int cv = C / V;
  float ss = 0.0f;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) ss += xv[k] * xv[k];
  }
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / float(C) + eps);
  if (lane == 0 && rstd) rstd[row] = r;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], wv[V], o[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = wv[k] * (xv[k] * r);  // HF's order: normalize, then w
    store_vec<V>(out + base + int64_t(j) * V, o);
  }
}

// out (N,C) = (x - mean) * rstd * w + b, biased variance (two passes); mean, rstd (N) saved when
// not null.
template <typename T, int V>
__global__ void layer_norm_forward_kernel(T* out, float* mean, float* rstd, const T* x,
                                          const float* w, const float* b, int N, int C, float eps) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const int64_t base = int64_t(row) * C;
  const int cv = C / V;
  float s = 0.0f;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) s += xv[k];
  }
  const float mu = warp_sum(s) / float(C);
  float var = 0.0f;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) var += (xv[k] - mu) * (xv[k] - mu);
  }
  const float r = 1.0f / sqrtf(warp_sum(var) / float(C) + eps);
  if (lane == 0) {
    if (mean) mean[row] = mu;
    if (rstd) rstd[row] = r;
  }
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], wv[V], bv[V], o[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
    load_vec<V>(bv, b + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = (xv[k] - mu) * r * wv[k] + bv[k];
    store_vec<V>(out + base + int64_t(j) * V, o);
  }
}

// ---- backward: dx ----

// dx (N,C) += r (g - x r^2 sum(g x) / C), g = dout * w.
template <typename T, int V>
__global__ void rms_norm_backward_dx_kernel(T* dx, const T* dout, const T* x, const float* w,
                                            const float* rstd, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const int64_t base = int64_t(row) * C;
  const int cv = C / V;
  const float r = rstd[row];
  float gx = 0.0f;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], dv[V], wv[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(dv, dout + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) gx += dv[k] * wv[k] * xv[k];
  }
  const float coef = r * r * warp_sum(gx) / float(C);
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], dv[V], wv[V], d[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(dv, dout + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
    load_vec<V>(d, dx + base + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) d[k] += r * (dv[k] * wv[k] - xv[k] * coef);
    store_vec<V>(dx + base + int64_t(j) * V, d);
  }
}

// dx (N,C) += rstd (g - mean(g) - xhat mean(g xhat)), xhat = (x - mean) rstd, g = dout * w.
template <typename T, int V>
__global__ void layer_norm_backward_dx_kernel(T* dx, const T* dout, const T* x, const float* w,
                                              const float* mean, const float* rstd, int N, int C) {
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (row >= N) return;
  const int64_t base = int64_t(row) * C;
  const int cv = C / V;
  const float mu = mean[row], r = rstd[row];
  float gs = 0.0f, gxs = 0.0f;
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], dv[V], wv[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(dv, dout + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float g = dv[k] * wv[k];
      gs += g;
      gxs += g * ((xv[k] - mu) * r);
    }
  }
  const float g_mean = warp_sum(gs) / float(C), gx_mean = warp_sum(gxs) / float(C);
  for (int j = lane; j < cv; j += kWarp) {
    float xv[V], dv[V], wv[V], d[V];
    load_vec<V>(xv, x + base + int64_t(j) * V);
    load_vec<V>(dv, dout + base + int64_t(j) * V);
    load_vec<V>(wv, w + int64_t(j) * V);
    load_vec<V>(d, dx + base + int64_t(j) * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float xhat = (xv[k] - mu) * r;
      d[k] += r * (dv[k] * wv[k] - g_mean - xhat * gx_mean);
    }
    store_vec<V>(dx + base + int64_t(j) * V, d);
  }
}

// ---- backward: dw, db ----

// How the rows are cut for the weight gradients: a function of N, C and T only (never of the
// GPU or of pointer alignment), so the summation order, and the bits, repeat.
struct Chunks {
  int rows = 1, count = 0;
};
template <typename T>
Chunks weight_grad_chunks(int N, int C) {
  const int64_t tiles = std::max<int64_t>(1, (C + kWarp * kVec<T> - 1) / (kWarp * kVec<T>));
  int64_t want = std::max<int64_t>(1, 1024 / tiles);  // about 1024 blocks in all
  want = std::min<int64_t>(want, std::max(1, (N + kWgRows - 1) / kWgRows));
  Chunks c;
  c.rows = int((N + want - 1) / want);
  c.count = (N + c.rows - 1) / c.rows;
  return c;
}

// Partial sums of one chunk of rows for a tile of 32*V columns: pw[chunk] (C) = sum over the
// chunk's rows of dout * xhat (xhat = (x - mean) * rstd; mean = 0 for RMSNorm), pb[chunk] (C) =
// sum of dout (kBias only). Thread (lane, y) sums rows y, y+8, ... of the chunk in order; then
// the 8 sums are added in order of y.
template <typename T, int V, bool kBias>
__global__ void norm_weight_grad_partial_kernel(float* pw, float* pb, const T* dout, const T* x,
                                                const float* mean, const float* rstd, int N, int C,
                                                int rows_per_chunk) {
  __shared__ float sw[kWgRows][kWarp * V];
  __shared__ float sb[kBias ? kWgRows : 1][kBias ? kWarp * V : 1];
  const int lane = threadIdx.x, y = threadIdx.y;
  const int j = blockIdx.x * kWarp + lane;  // vector index within a row
  const bool valid = j < C / V;
  const int chunk = blockIdx.y;
  const int r0 = chunk * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
  float aw[V], ab[V];
#pragma unroll
  for (int k = 0; k < V; ++k) aw[k] = 0.0f, ab[k] = 0.0f;
  if (valid) {
    for (int n = r0 + y; n < r1; n += kWgRows) {
      const int64_t at = int64_t(n) * C + int64_t(j) * V;
      float xv[V], dv[V];
      load_vec<V>(xv, x + at);
      load_vec<V>(dv, dout + at);
      const float r = rstd[n], mu = kBias ? mean[n] : 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        aw[k] += dv[k] * ((xv[k] - mu) * r);
        if constexpr (kBias) ab[k] += dv[k];
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    sw[y][lane * V + k] = aw[k];
    if constexpr (kBias) sb[y][lane * V + k] = ab[k];
  }
  __syncthreads();
  if (y == 0 && valid) {
    const int64_t out = int64_t(chunk) * C + int64_t(j) * V;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float tw = 0.0f, tb = 0.0f;
      for (int i = 0; i < kWgRows; ++i) {
        tw += sw[i][lane * V + k];
        if constexpr (kBias) tb += sb[i][lane * V + k];
      }
      pw[out + k] = tw;
      if constexpr (kBias) pb[out + k] = tb;
    }
  }
}

// d (C) += sum over chunks of p (chunks, C), blockIdx.y choosing (dw, pw) or (db, pb). Thread
// (lane, y) sums chunks y, y+32, ... in order, then the 32 sums are added in order of y.
__global__ void sum_partials_kernel(float* dw, const float* pw, float* db, const float* pb,
                                    int chunks, int C) {
  __shared__ float s[kRedY][kWarp + 1];
  const float* p = blockIdx.y == 0 ? pw : pb;
  float* d = blockIdx.y == 0 ? dw : db;
  const int c = blockIdx.x * kWarp + threadIdx.x;
  float acc = 0.0f;
  if (c < C)
    for (int k = threadIdx.y; k < chunks; k += kRedY) acc += p[int64_t(k) * C + c];
  s[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int i = 0; i < kRedY; ++i) t += s[i][threadIdx.x];
    d[c] += t;
  }
}

// dw (and db when not null) += the column sums, through pool scratch freed after the launches
// (stream order makes the reuse safe).
template <typename T, int V>
void norm_weight_grad(float* dw, float* db, const T* dout, const T* x, const float* mean,
                      const float* rstd, int N, int C, cudaStream_t s, const char* op) {
  const Chunks ch = weight_grad_chunks<T>(N, C);
  const int nb = db ? 2 : 1;
  float* scratch =
      static_cast<float*>(device_alloc(size_t(nb) * ch.count * C * sizeof(float), s, op));
  float* pw = scratch;
  float* pb = db ? scratch + int64_t(ch.count) * C : nullptr;
  const dim3 block(kWarp, kWgRows);
  const dim3 grid(unsigned((C / V + kWarp - 1) / kWarp), unsigned(ch.count));
  if (db)
    norm_weight_grad_partial_kernel<T, V, true>
        <<<grid, block, 0, s>>>(pw, pb, dout, x, mean, rstd, N, C, ch.rows);
  else
    norm_weight_grad_partial_kernel<T, V, false>
        <<<grid, block, 0, s>>>(pw, pb, dout, x, mean, rstd, N, C, ch.rows);
  check_launch(op);
  sum_partials_kernel<<<dim3(unsigned((C + kWarp - 1) / kWarp), unsigned(nb)), dim3(kWarp, kRedY),
                        0, s>>>(dw, pw, db, pb, ch.count, C);
  check_launch(op);
  device_free(scratch);
}

// The 16-byte path when every row start and the weight vectors are 16-byte aligned.
template <typename T>
bool rows_vectorizable(int C, std::initializer_list<const void*> ptrs) {
  if (C % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (p && !kern::aligned16(p)) return false;
  return true;
}

void check_shape(const char* op, int N, int C) {
  KILN_CHECK(N >= 0, op, "row count N must be >= 0, got ", N);
  KILN_CHECK(C > 0, op, "channel count C must be positive, got ", C);
}

}  // namespace

template <typename T>
void rms_norm_forward(T* out, float* rstd, const T* x, const float* w, int N, int C, float eps,
                      cudaStream_t s) {
  const char* op = "cuda rms_norm_forward";
  check_shape(op, N, C);
  if (N == 0) return;
  if (rows_vectorizable<T>(C, {out, x, w}))
    rms_norm_forward_kernel<T, kVec<T>>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(out, rstd, x, w, N, C, eps);
  else
    rms_norm_forward_kernel<T, 1>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(out, rstd, x, w, N, C, eps);
  check_launch(op);
}

template <typename T>
void rms_norm_backward(T* dx, float* dw, const T* dout, const T* x, const float* w,
                       const float* rstd, int N, int C, cudaStream_t s) {
  const char* op = "cuda rms_norm_backward";
  check_shape(op, N, C);
  if (N == 0) return;
  if (rows_vectorizable<T>(C, {dx, dout, x, w})) {
    constexpr int V = kVec<T>;
    rms_norm_backward_dx_kernel<T, V>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dx, dout, x, w, rstd, N, C);
    check_launch(op);
    norm_weight_grad<T, V>(dw, nullptr, dout, x, nullptr, rstd, N, C, s, op);
  } else {
    rms_norm_backward_dx_kernel<T, 1>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dx, dout, x, w, rstd, N, C);
    check_launch(op);
    norm_weight_grad<T, 1>(dw, nullptr, dout, x, nullptr, rstd, N, C, s, op);
  }
}

template <typename T>
void layer_norm_forward(T* out, float* mean, float* rstd, const T* x, const float* w,
                        const float* b, int N, int C, float eps, cudaStream_t s) {
  const char* op = "cuda layer_norm_forward";
  check_shape(op, N, C);
  if (N == 0) return;
  if (rows_vectorizable<T>(C, {out, x, w, b}))
    layer_norm_forward_kernel<T, kVec<T>>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(out, mean, rstd, x, w, b, N, C, eps);
  else
    layer_norm_forward_kernel<T, 1>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(out, mean, rstd, x, w, b, N, C, eps);
  check_launch(op);
}

template <typename T>
void layer_norm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const float* w,
                         const float* mean, const float* rstd, int N, int C, cudaStream_t s) {
  const char* op = "cuda layer_norm_backward";
  check_shape(op, N, C);
  KILN_CHECK(db != nullptr, op, "db must not be null");
  if (N == 0) return;
  if (rows_vectorizable<T>(C, {dx, dout, x, w})) {
    constexpr int V = kVec<T>;
    layer_norm_backward_dx_kernel<T, V>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dx, dout, x, w, mean, rstd, N, C);
    check_launch(op);
    norm_weight_grad<T, V>(dw, db, dout, x, mean, rstd, N, C, s, op);
  } else {
    layer_norm_backward_dx_kernel<T, 1>
        <<<row_blocks(N), kRowsPerBlock * kWarp, 0, s>>>(dx, dout, x, w, mean, rstd, N, C);
    check_launch(op);
    norm_weight_grad<T, 1>(dw, db, dout, x, mean, rstd, N, C, s, op);
  }
}

#define KILN_NORMS(T)                                                                            \
  template void rms_norm_forward<T>(T*, float*, const T*, const float*, int, int, float,         \
                                    cudaStream_t);                                               \
  template void rms_norm_backward<T>(T*, float*, const T*, const T*, const float*, const float*, \
                                     int, int, cudaStream_t);                                    \
  template void layer_norm_forward<T>(T*, float*, float*, const T*, const float*, const float*,  \
                                      int, int, float, cudaStream_t);                            \
  template void layer_norm_backward<T>(T*, float*, float*, const T*, const T*, const float*,     \
                                       const float*, const float*, int, int, cudaStream_t);
KILN_NORMS(float)
KILN_NORMS(bf16)
#undef KILN_NORMS

}  // namespace kiln::cuda

// Fused LM head + cross-entropy on the GPU: per chunk of rows, logits = h W^T (cuBLASLt, fp32
// out), one block per row for the loss and dlogits, then dh = dlogits W and dW += dlogits^T h.
//
// Napkin math, GPT-2 124M, N = 8192 tokens, C = 768, V = 50257:
//   forward  2*N*V*C = 632 GFLOP; backward 2 x 632 GFLOP; ~1.9 TFLOP in all, ~3 ms at 600 TFLOP/s.
//   softmax kernel: reads the (N,V) fp32 logits twice and writes dlogits once: 1.6 GB read +
//   0.8 GB (bf16) or 1.6 GB (fp32) written, ~1 ms at 3 TB/s. Chunks of 5341 rows (1 GiB fp32).
#include <cmath>
#include <type_traits>

#include "kiln/cuda/cross_entropy.h"
#include "kiln/cuda/device_types.cuh"
#include "kiln/cuda/gemm.h"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 512;  // per row: 16 warps

// (m, s) with s = sum e^(x - m) over the elements seen; merges two such pairs.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float mm = fmaxf(m, m2);
  if (mm == -INFINITY) return;  // both empty
  s = s * expf(m - mm) + s2 * expf(m2 - mm);
  m = mm;
}

// One block per row of the chunk. logits (rows, V) fp32; dl (rows, V) in T receives dlogits
// when training (for T = float it is `logits` itself: each element is read, then overwritten,
// by the same thread, after the whole row's max and sum are known).
template <typename T>
__global__ void softmax_xent_kernel(float* losses, const float* logits, T* dl, const int* targets,
                                    int V, float grad_scale, bool train) {
  const int64_t row = blockIdx.x;
  const float* x = logits + row * V;
  const int y = targets[row];
  if (y < 0 || y >= V) {  // uniform over the block: no barrier is skipped by part of it
    if (threadIdx.x == 0) losses[row] = y < 0 ? 0.0f : NAN;
    if (train)
      for (int v = threadIdx.x; v < V; v += blockDim.x) dl[row * V + v] = from_f<T>(0.0f);
    return;
  }
  // Read before any thread of the block can overwrite it with dlogits (in place, T = float).
  const float logit_y = threadIdx.x == 0 ? x[y] : 0.0f;

  // Online max and sum: one read of the row.
  float m = -INFINITY, s = 0.0f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float xv = x[v];
    if (xv > m) {
      s = s * expf(m - xv) + 1.0f;
      m = xv;
    } else {
      s += expf(xv - m);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
    merge(m, s, m2, s2);
  }
  __shared__ float wm[kThreads / 32], ws[kThreads / 32];
  __shared__ float row_m, row_s;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) wm[warp] = m, ws[warp] = s;
  __syncthreads();
  if (warp == 0) {
    m = lane < warps ? wm[lane] : -INFINITY;
    s = lane < warps ? ws[lane] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
      merge(m, s, m2, s2);
    }
    if (lane == 0) row_m = m, row_s = s;
  }
  __syncthreads();
  m = row_m, s = row_s;
  if (threadIdx.x == 0) losses[row] = m + logf(s) - logit_y;
  if (!train) return;
  const float k = grad_scale / s;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float g = expf(x[v] - m) * k - (v == y ? grad_scale : 0.0f);
    dl[row * V + v] = from_f<T>(g);
  }
}

}  // namespace

template <typename T>
void lm_head_cross_entropy(float* losses, T* dh, float* dw, const T* h, const T* w,
                           const int* targets, int N, int C, int V, float grad_scale,
                           cudaStream_t s, int chunk_rows) {
  constexpr const char* op = "cuda cross_entropy";
  KILN_CHECK(N >= 0 && C > 0 && V > 0, op, "bad shape N=", N, " C=", C, " V=", V);
  KILN_CHECK(!dh || dw, op, "dh given without dw: the backward needs both");
  KILN_CHECK(chunk_rows >= 0, op, "chunk_rows must be >= 0 (0: automatic), got ", chunk_rows);
  if (N == 0) return;
  const bool train = dh != nullptr;
  // At most 2^28 fp32 logits (1 GiB) per chunk.
  const int rows = chunk_rows > 0 ? std::min(chunk_rows, N)
                                  : std::max(1, std::min<int>(N, (int64_t(1) << 28) / V));
  DeviceBuffer<float> logits(int64_t(rows) * V, op, s);  // (rows, V)
  // bf16: dlogits for the two backward GEMMs, rounded once from fp32.
  DeviceBuffer<T> dl_low;
  T* dl = nullptr;  // (rows, V) dlogits in T
  if constexpr (std::is_same_v<T, float>) {
    dl = logits.data();  // in place
  } else if (train) {
    dl_low = DeviceBuffer<T>(int64_t(rows) * V, op, s);
    dl = dl_low.data();
  }

  for (int n0 = 0; n0 < N; n0 += rows) {
    const int nc = std::min(rows, N - n0);
    const T* hc = h + int64_t(n0) * C;
    // logits (nc,V) = h_chunk (nc,C) @ W^T, W (V,C).
    gemm<T, float>(logits.data(), hc, w, nc, V, C, false, true, 1.0f, 0.0f, s);
    softmax_xent_kernel<T><<<nc, kThreads, 0, s>>>(losses + n0, logits.data(), dl, targets + n0, V,
                                                   grad_scale, train);
    check_launch(op);
    if (!train) continue;
    // dh (nc,C) = dlogits (nc,V) @ W (V,C), overwritten.
    gemm<T, T>(dh + int64_t(n0) * C, dl, w, nc, C, V, false, false, 1.0f, 0.0f, s);
    // dW (V,C) += dlogits^T (V,nc) @ h_chunk (nc,C).
    gemm<T, float>(dw, dl, hc, V, C, nc, true, false, 1.0f, 1.0f, s);
  }
}

template void lm_head_cross_entropy<float>(float*, float*, float*, const float*, const float*,
                                           const int*, int, int, int, float, cudaStream_t, int);
template void lm_head_cross_entropy<bf16>(float*, bf16*, float*, const bf16*, const bf16*,
                                          const int*, int, int, int, float, cudaStream_t, int);

}  // namespace kiln::cuda

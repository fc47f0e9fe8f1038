// Rotary position embedding on the GPU (contract: ops/rope.h, Hugging Face's rotate-half), in
// place. A block per row, a thread per rotated pair (i, i + D/2) of a head: reads and writes two
// elements of T, reads one cos and one sin (the tables stay in L2). Memory-bound.
#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 256;

// sign = +1 rotates by +angle (forward), -1 by -angle (backward, the transpose).
template <typename T>
__global__ void rope_kernel(T* x, int N, int heads, int D, int stride, const int* pos,
                            const float* cos, const float* sin, float sign) {
  const int half = D / 2, per_row = heads * half;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* c_row = cos + int64_t(pos[n]) * half;
    const float* s_row = sin + int64_t(pos[n]) * half;
    for (int u = threadIdx.x; u < per_row; u += blockDim.x) {
      const int h = u / half, i = u % half;
      const float c = c_row[i], si = sign * s_row[i];
      T* xh = x + n * stride + int64_t(h) * D;
      const float a = to_f(xh[i]), b = to_f(xh[i + half]);
      xh[i] = from_f<T>(a * c - b * si);
      xh[i + half] = from_f<T>(b * c + a * si);
    }
  }
}

template <typename T>
void rope(T* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
          const float* sin, float sign, cudaStream_t s, const char* op) {
  KILN_CHECK(D > 0 && D % 2 == 0, op, "head dim D must be positive and even, got ", D);
  KILN_CHECK(N >= 0 && heads >= 0, op, "need N >= 0 and heads >= 0, got N = ", N,
             ", heads = ", heads);
  KILN_CHECK(int64_t(heads) * D <= stride, op, heads, " heads of ", D,
             " dims do not fit in rows of stride ", stride);
  if (N == 0 || heads == 0) return;
  const int per_row = heads * (D / 2);
  const int threads = per_row < kThreads ? (per_row + 31) / 32 * 32 : kThreads;
  const unsigned blocks = unsigned(N < (1 << 20) ? N : (1 << 20));
  rope_kernel<T><<<blocks, threads, 0, s>>>(x, N, heads, D, stride, pos, cos, sin, sign);
  check_launch(op);
}

}  // namespace

template <typename T>
void rope_forward(T* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
                  const float* sin, cudaStream_t s) {
  rope(x, N, heads, D, stride, pos, cos, sin, 1.0f, s, "cuda rope_forward");
}

template <typename T>
void rope_backward(T* dx, int N, int heads, int D, int stride, const int* pos, const float* cos,
                   const float* sin, cudaStream_t s) {
  rope(dx, N, heads, D, stride, pos, cos, sin, -1.0f, s, "cuda rope_backward");
}

#define KILN_ROPE(T)                                                                             \
  template void rope_forward<T>(T*, int, int, int, int, const int*, const float*, const float*,  \
                                cudaStream_t);                                                   \
  template void rope_backward<T>(T*, int, int, int, int, const int*, const float*, const float*, \
                                 cudaStream_t);
KILN_ROPE(float)
KILN_ROPE(bf16)
#undef KILN_ROPE

}  // namespace kiln::cuda

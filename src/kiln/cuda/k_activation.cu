// Feed-forward activations on the GPU (contract: ops/activation.h): SwiGLU and tanh GELU, fp32
// math with the accurate expf (not __expf: these are memory-bound, the exact exp is free).
// 16-byte vectors when the sizes and pointers allow, else element by element.
#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

using kern::load_vec;
using kern::store_vec;

constexpr int kThreads = 256;
constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) {
  return 1.0f / (1.0f + expf(-x));
}

// out (N,F) = silu(gate) * up, gate = gu[:, 0:F], up = gu[:, F:2F]. Flat over N * F/V vectors.
template <typename T, int V>
__global__ void swiglu_forward_kernel(T* out, const T* gu, int N, int F) {
  const int64_t fv = F / V, total = int64_t(N) * fv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / fv, f = (i % fv) * V;
    const T* gate = gu + n * 2 * F + f;
    float g[V], u[V], o[V];
    load_vec<V>(g, gate);
    load_vec<V>(u, gate + F);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = g[k] * sigmoid(g[k]) * u[k];
    store_vec<V>(out + n * F + f, o);
  }
}

// dgate = dout * up * s (1 + g (1 - s)), dup = dout * g * s, s = sigmoid(g) (overwritten).
template <typename T, int V>
__global__ void swiglu_backward_kernel(T* dgu, const T* dout, const T* gu, int N, int F) {
  const int64_t fv = F / V, total = int64_t(N) * fv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / fv, f = (i % fv) * V;
    const int64_t at = n * 2 * F + f;
    float g[V], u[V], d[V], dg[V], du[V];
    load_vec<V>(g, gu + at);
    load_vec<V>(u, gu + at + F);
    load_vec<V>(d, dout + n * F + f);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float s = sigmoid(g[k]);
      dg[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
      du[k] = d[k] * g[k] * s;
    }
    store_vec<V>(dgu + at, dg);
    store_vec<V>(dgu + at + F, du);
  }
}

// gelu(x) = 0.5 x (1 + tanh(y)) = x sigmoid(2y), y = k (x + a x^3): the sigmoid form keeps the
// tiny negative tail that 1 + tanh(y) would cancel to 0 (as the reference does).
__device__ __forceinline__ float gelu(float x) {
  return x * sigmoid(2.0f * kGeluK * (x + kGeluA * x * x * x));
}
__device__ __forceinline__ float gelu_grad(float x) {
  const float s = sigmoid(2.0f * kGeluK * (x + kGeluA * x * x * x));
  return s + x * s * (1.0f - s) * 2.0f * kGeluK * (1.0f + 3.0f * kGeluA * x * x);
}

// Elementwise over n: vectors of V while whole, then the tail element by element.
template <typename T, int V>
__global__ void gelu_forward_kernel(T* out, const T* x, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float v[V];
    load_vec<V>(v, x + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = gelu(v[k]);
    store_vec<V>(out + i * V, v);
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) out[i] = from_f<T>(gelu(to_f(x[i])));
}

template <typename T, int V>
__global__ void gelu_backward_kernel(T* dx, const T* dout, const T* x, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float v[V], d[V];
    load_vec<V>(v, x + i * V);
    load_vec<V>(d, dout + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) d[k] *= gelu_grad(v[k]);
    store_vec<V>(dx + i * V, d);
  }
  for (int64_t i = nv * V + tid; i < n; i += stride)
    dx[i] = from_f<T>(to_f(dout[i]) * gelu_grad(to_f(x[i])));
}

template <typename T>
constexpr int kVec = 16 / sizeof(T);

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (!kern::aligned16(p)) return false;
  return true;
}

}  // namespace

template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int F, cudaStream_t s) {
  const char* op = "cuda swiglu_forward";
  KILN_CHECK(N >= 0 && F > 0, op, "need N >= 0 and F > 0, got N = ", N, ", F = ", F);
  if (N == 0) return;
  constexpr int V = kVec<T>;
  if (F % V == 0 && all_aligned({out, gu}))
    swiglu_forward_kernel<T, V>
        <<<kern::grid_for(int64_t(N) * (F / V), kThreads), kThreads, 0, s>>>(out, gu, N, F);
  else
    swiglu_forward_kernel<T, 1>
        <<<kern::grid_for(int64_t(N) * F, kThreads), kThreads, 0, s>>>(out, gu, N, F);
  check_launch(op);
}

template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int F, cudaStream_t s) {
  const char* op = "cuda swiglu_backward";
  KILN_CHECK(N >= 0 && F > 0, op, "need N >= 0 and F > 0, got N = ", N, ", F = ", F);
  if (N == 0) return;
  constexpr int V = kVec<T>;
  if (F % V == 0 && all_aligned({dgu, dout, gu}))
    swiglu_backward_kernel<T, V>
        <<<kern::grid_for(int64_t(N) * (F / V), kThreads), kThreads, 0, s>>>(dgu, dout, gu, N, F);
  else
    swiglu_backward_kernel<T, 1>
        <<<kern::grid_for(int64_t(N) * F, kThreads), kThreads, 0, s>>>(dgu, dout, gu, N, F);
  check_launch(op);
}

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, cudaStream_t s) {
  const char* op = "cuda gelu_forward";
  KILN_CHECK(n >= 0, op, "element count must be >= 0, got ", n);
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned({out, x}))
    gelu_forward_kernel<T, V><<<kern::grid_for(n / V + 1, kThreads), kThreads, 0, s>>>(out, x, n);
  else
    gelu_forward_kernel<T, 1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(out, x, n);
  check_launch(op);
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, cudaStream_t s) {
  const char* op = "cuda gelu_backward";
  KILN_CHECK(n >= 0, op, "element count must be >= 0, got ", n);
  if (n == 0) return;
  constexpr int V = kVec<T>;
  if (all_aligned({dx, dout, x}))
    gelu_backward_kernel<T, V>
        <<<kern::grid_for(n / V + 1, kThreads), kThreads, 0, s>>>(dx, dout, x, n);
  else
    gelu_backward_kernel<T, 1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(dx, dout, x, n);
  check_launch(op);
}

#define KILN_ACTIVATION(T)                                                          \
  template void swiglu_forward<T>(T*, const T*, int, int, cudaStream_t);            \
  template void swiglu_backward<T>(T*, const T*, const T*, int, int, cudaStream_t); \
  template void gelu_forward<T>(T*, const T*, int64_t, cudaStream_t);               \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t, cudaStream_t);
KILN_ACTIVATION(float)
KILN_ACTIVATION(bf16)
#undef KILN_ACTIVATION

}  // namespace kiln::cuda

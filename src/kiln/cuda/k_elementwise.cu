// Small vector ops on the GPU (contract: ops/elementwise.h) and the fp32 <-> bf16 conversions.
// All memory-bound: 16-byte vectors when the pointers allow, the tail element by element.
#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

using kern::load_vec;
using kern::store_vec;

constexpr int kThreads = 256;

template <typename T, int V>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float x[V], y[V];
    load_vec<V>(x, a + i * V);
    load_vec<V>(y, b + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] += y[k];
    store_vec<V>(out + i * V, x);
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

template <int V>
__global__ void scale_kernel(float* x, float v, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float y[V];
    load_vec<V>(y, x + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) y[k] *= v;
    store_vec<V>(x + i * V, y);
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) x[i] *= v;
}

// sum_squares: fixed chunks of kSsChunk elements, one block each; thread t sums the groups of 4
// elements t, t + 256, ... of its chunk in order, in double (each square of a float is exact in
// double), and the block adds its threads' sums by a fixed tree. A second, one-block kernel adds
// the chunk sums the same way. The order depends on n alone: the same bits on any GPU, and for
// aligned and unaligned x alike (the unaligned path reads the same groups element by element).
constexpr int kSsThreads = 256;
constexpr int64_t kSsChunk = 16 * 4 * kSsThreads;  // 16 groups of 4 per thread

template <bool kAligned>
__global__ void sum_squares_chunks_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double shared[32];
  const int64_t begin = blockIdx.x * kSsChunk;
  const int64_t end = begin + kSsChunk < n ? begin + kSsChunk : n;
  double acc = 0.0;
  for (int64_t g = begin + 4 * int64_t(threadIdx.x); g < end; g += 4 * kSsThreads) {
    float v[4];
    if (kAligned && g + 4 <= end) {
      const float4 q = *reinterpret_cast<const float4*>(x + g);
      v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = g + k < end ? x[g + k] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) acc += double(v[k]) * double(v[k]);
  }
  acc = kern::block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_squares_total_kernel(double* result, const double* partial, int64_t chunks) {
  __shared__ double shared[32];
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < chunks; k += blockDim.x) acc += partial[k];
  acc = kern::block_sum(acc, shared);
  if (threadIdx.x == 0) *result = acc;
}

template <int V>
__global__ void f32_to_bf16_kernel(bf16* dst, const float* src, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float f[V];
    load_vec<V>(f, src + i * V);
    uint16_t h[V];
#pragma unroll
    for (int k = 0; k < V; ++k) h[k] = kern::f32_to_bf16_bits(f[k]);
    if constexpr (V == 8) {
      uint4 w;
      w.x = h[0] | uint32_t(h[1]) << 16, w.y = h[2] | uint32_t(h[3]) << 16;
      w.z = h[4] | uint32_t(h[5]) << 16, w.w = h[6] | uint32_t(h[7]) << 16;
      *reinterpret_cast<uint4*>(dst + i * V) = w;
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) dst[i * V + k] = __ushort_as_bfloat16(h[k]);
    }
  }
  for (int64_t i = nv * V + tid; i < n; i += stride)
    dst[i] = __ushort_as_bfloat16(kern::f32_to_bf16_bits(src[i]));
}

template <int V>
__global__ void bf16_to_f32_kernel(float* dst, const bf16* src, int64_t n) {
  const int64_t nv = n / V, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = tid; i < nv; i += stride) {
    float f[V];
    load_vec<V>(f, src + i * V);  // exact: bf16 is the top half of an fp32
    store_vec<V>(dst + i * V, f);
  }
  for (int64_t i = nv * V + tid; i < n; i += stride) dst[i] = __bfloat162float(src[i]);
}

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (!kern::aligned16(p)) return false;
  return true;
}

void check_count(const char* op, int64_t n) {
  KILN_CHECK(n >= 0, op, "element count must be >= 0, got ", n);
}

}  // namespace

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t s) {
  const char* op = "cuda add";
  check_count(op, n);
  if (n == 0) return;
  constexpr int V = 16 / sizeof(T);
  if (all_aligned({out, a, b}))
    add_kernel<T, V><<<kern::grid_for(n / V + 1, kThreads), kThreads, 0, s>>>(out, a, b, n);
  else
    add_kernel<T, 1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(out, a, b, n);
  check_launch(op);
}
template void add<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void add<bf16>(bf16*, const bf16*, const bf16*, int64_t, cudaStream_t);

void scale(float* x, float v, int64_t n, cudaStream_t s) {
  const char* op = "cuda scale";
  check_count(op, n);
  if (n == 0) return;
  if (kern::aligned16(x))
    scale_kernel<4><<<kern::grid_for(n / 4 + 1, kThreads), kThreads, 0, s>>>(x, v, n);
  else
    scale_kernel<1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(x, v, n);
  check_launch(op);
}

void sum_squares(double* result, const float* x, int64_t n, cudaStream_t s) {
  const char* op = "cuda sum_squares";
  check_count(op, n);
  const int64_t chunks = (n + kSsChunk - 1) / kSsChunk;
  KILN_CHECK(chunks < (int64_t(1) << 31), op, "n = ", n, " is too large");
  double* partial = nullptr;
  if (chunks > 0) {
    partial = static_cast<double*>(device_alloc(size_t(chunks) * sizeof(double), s, op));
    if (kern::aligned16(x))
      sum_squares_chunks_kernel<true><<<unsigned(chunks), kSsThreads, 0, s>>>(partial, x, n);
    else
      sum_squares_chunks_kernel<false><<<unsigned(chunks), kSsThreads, 0, s>>>(partial, x, n);
    check_launch(op);
  }
  sum_squares_total_kernel<<<1, 1024, 0, s>>>(result, partial, chunks);  // n == 0 writes 0
  check_launch(op);
  if (partial) device_free(partial);
}

void f32_to_bf16(bf16* dst, const float* src, int64_t n, cudaStream_t s) {
  const char* op = "cuda f32_to_bf16";
  check_count(op, n);
  if (n == 0) return;
  if (all_aligned({dst, src}))
    f32_to_bf16_kernel<8><<<kern::grid_for(n / 8 + 1, kThreads), kThreads, 0, s>>>(dst, src, n);
  else
    f32_to_bf16_kernel<1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(dst, src, n);
  check_launch(op);
}

void bf16_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t s) {
  const char* op = "cuda bf16_to_f32";
  check_count(op, n);
  if (n == 0) return;
  if (all_aligned({dst, src}))
    bf16_to_f32_kernel<8><<<kern::grid_for(n / 8 + 1, kThreads), kThreads, 0, s>>>(dst, src, n);
  else
    bf16_to_f32_kernel<1><<<kern::grid_for(n, kThreads), kThreads, 0, s>>>(dst, src, n);
  check_launch(op);
}

}  // namespace kiln::cuda

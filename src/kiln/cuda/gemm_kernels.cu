// The two small kernels beside the cuBLASLt GEMMs: the bias gradient (column sums of dy, in a
// fixed order) and the elementwise epilogue for the shapes cuBLASLt cannot fuse.
#include <algorithm>
#include <cstdint>

#include "kiln/cuda/device_types.cuh"
#include "kiln/cuda/gemm.h"

namespace kiln::cuda {

namespace {

// GPT-2's gelu_new, 0.5 x (1 + tanh(y)) written as x sigmoid(2y) like ops/ref/activation.cpp
// (the same function; no cancellation for very negative x).
__device__ __forceinline__ float gelu(float x) {
  const float y = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + expf(-2.0f * y));
}

// One thread per element (grid-stride): c (M,N) row-major, bias per column.
template <typename T>
__global__ void epilogue_kernel(T* c, T* aux, const float* bias, int64_t total, int N,
                                bool gelu_on) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = to_f(c[i]);
    if (bias) v += bias[i % N];
    if (aux) aux[i] = from_f<T>(v);
    c[i] = from_f<T>(gelu_on ? gelu(v) : v);
  }
}

// Bias gradient, pass 1. Block (bx, by) sums columns [32 bx, 32 bx + 32) over the rows of chunk
// by: thread (tx, ty) adds rows ty, ty + 8, ... of the chunk in order (a warp reads 32 adjacent
// columns of one row), then thread (tx, 0) adds the 8 row groups in order.
constexpr int kCols = 32, kGroups = 8;

template <typename T>
__global__ void column_partials(float* partial, const T* dy, int N, int OUT, int chunk_rows) {
  __shared__ float sums[kGroups][kCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int col = blockIdx.x * kCols + tx;
  const int r0 = blockIdx.y * chunk_rows;
  const int r1 = min(N, r0 + chunk_rows);
  float acc = 0.0f;
  if (col < OUT)
    for (int r = r0 + ty; r < r1; r += kGroups) acc += to_f(dy[int64_t(r) * OUT + col]);
  sums[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < OUT) {
    float t = 0.0f;
    for (int g = 0; g < kGroups; ++g) t += sums[g][tx];
    partial[int64_t(blockIdx.y) * OUT + col] = t;
  }
}

// Pass 2: dbias[col] += the chunks' partials, in chunk order.
__global__ void add_partials(float* dbias, const float* partial, int chunks, int OUT) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= OUT) return;
  float t = 0.0f;
  for (int k = 0; k < chunks; ++k) t += partial[int64_t(k) * OUT + col];
  dbias[col] += t;
}

}  // namespace

template <typename T>
void bias_backward(float* dbias, const T* dy, int N, int OUT, cudaStream_t s) {
  KILN_CHECK(N >= 0 && OUT >= 0, "cuda bias_backward", "bad shape N=", N, " OUT=", OUT);
  if (N == 0 || OUT == 0) return;
  // Chunks depend on N only (so the sums' order does too); at most 65535 of them (gridDim.y).
  const int chunk_rows = std::max(256, int((int64_t(N) + 65534) / 65535));
  const int chunks = (N + chunk_rows - 1) / chunk_rows;
  DeviceBuffer<float> partial(int64_t(chunks) * OUT, "cuda bias_backward", s);
  column_partials<T><<<dim3((OUT + kCols - 1) / kCols, chunks), dim3(kCols, kGroups), 0, s>>>(
      partial.data(), dy, N, OUT, chunk_rows);
  check_launch("cuda bias_backward");
  add_partials<<<(OUT + 255) / 256, 256, 0, s>>>(dbias, partial.data(), chunks, OUT);
  check_launch("cuda bias_backward");
}

template void bias_backward<float>(float*, const float*, int, int, cudaStream_t);
template void bias_backward<bf16>(float*, const bf16*, int, int, cudaStream_t);

namespace detail {

template <typename T>
void apply_epilogue(T* c, T* aux, const float* bias, int M, int N, bool gelu_on, cudaStream_t s) {
  const int64_t total = int64_t(M) * N;
  if (total <= 0) return;
  const int threads = 256;
  const int64_t blocks =
      std::min<int64_t>((total + threads - 1) / threads, int64_t(sm_count()) * 32);
  epilogue_kernel<T>
      <<<int(std::max<int64_t>(blocks, 1)), threads, 0, s>>>(c, aux, bias, total, N, gelu_on);
  check_launch("cuda gemm epilogue");
}

template void apply_epilogue<float>(float*, float*, const float*, int, int, bool, cudaStream_t);
template void apply_epilogue<bf16>(bf16*, bf16*, const float*, int, int, bool, cudaStream_t);
template void apply_epilogue<f16>(f16*, f16*, const float*, int, int, bool, cudaStream_t);

}  // namespace detail

}  // namespace kiln::cuda

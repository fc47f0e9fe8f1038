#include "kiln/cuda/sampling.h"

#include <cfloat>

#include "kiln/cuda/device_types.cuh"

namespace kiln::cuda {

namespace {

// (value, index) with the larger value winning; on equal values the lower index.
__device__ inline void better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

template <typename T>
__global__ void argmax_rows_kernel(int* out, const T* x, int V) {
  const T* row = x + int64_t(blockIdx.x) * V;
  float best = -FLT_MAX;
  int idx = V;  // "none yet": loses every tie against a real index
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    float f = to_f(row[j]);
    if (f == f) better(best, idx, f, j);  // NaN compares unequal to itself: skipped
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, idx, o);
    better(best, idx, ov, oi);
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) sv[warp] = best, si[warp] = idx;
  __syncthreads();
  if (warp == 0) {
    best = lane < warps ? sv[lane] : -FLT_MAX;
    idx = lane < warps ? si[lane] : V;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, idx, o);
      better(best, idx, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = idx < V ? idx : 0;  // an all-NaN row gives 0
  }
}

}  // namespace

template <typename T>
void argmax_rows(int* out, const T* x, int N, int V, cudaStream_t s) {
  KILN_CHECK(N >= 0 && V > 0, "cuda argmax_rows", "need N >= 0 and V > 0, got N=", N, " V=", V);
  if (N == 0) return;
  argmax_rows_kernel<T><<<N, 256, 0, s>>>(out, x, V);
  check_launch("argmax_rows");
}

template void argmax_rows<float>(int*, const float*, int, int, cudaStream_t);
template void argmax_rows<bf16>(int*, const bf16*, int, int, cudaStream_t);

}  // namespace kiln::cuda

// Element access in device code: every kernel loads T (float, bf16, fp16) into fp32, computes in
// fp32, and rounds once on the way out (round to nearest even). Internal to the cuda layer.
#pragma once

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {

__device__ __forceinline__ float to_f(float x) {
  return x;
}
__device__ __forceinline__ float to_f(bf16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_f(f16 x) {
  return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ f16 from_f<f16>(float x) {
  return __float2half_rn(x);
}

}  // namespace kiln::cuda

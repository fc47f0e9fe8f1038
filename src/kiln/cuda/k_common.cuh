// Device helpers shared by the memory-bound kernels (k_*.cu): fp32 <-> T element access, packed
// 16-byte loads and stores, warp and block sums, launch sizes. Internal to the cuda layer.
#pragma once

#include <cstdint>

#include "kiln/cuda/device_types.cuh"
#include "kiln/cuda/runtime.h"

namespace kiln::cuda::kern {

constexpr int kWarp = 32;

// fp32 -> T, round to nearest even (the hardware cvt; NaN becomes the canonical NaN).

// Bit-exact kiln::f32_to_bf16 (core/dtype.h): round to nearest even, a NaN keeps its sign and
// top payload bits and is made quiet. For the explicit conversions and AdamW's bf16 copy.
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// V consecutive elements of T at p (aligned to V*sizeof(T) when that is a multiple of 16 bytes:
// then read as 16-byte words) to fp32.
template <int V, typename T>
__device__ __forceinline__ void load_vec(float (&f)[V], const T* p) {
  if constexpr ((V * sizeof(T)) % 16 == 0) {
    constexpr int kWords = V * sizeof(T) / 16, kPer = 16 / sizeof(T);
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      int4 raw = reinterpret_cast<const int4*>(p)[w];
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPer; ++k) f[w * kPer + k] = to_f(e[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = to_f(p[k]);
  }
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[V]) {
  if constexpr ((V * sizeof(T)) % 16 == 0) {
    constexpr int kWords = V * sizeof(T) / 16, kPer = 16 / sizeof(T);
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      int4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < kPer; ++k) e[k] = from_f<T>(f[w * kPer + k]);
      reinterpret_cast<int4*>(p)[w] = raw;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[k] = from_f<T>(f[k]);
  }
}

// Sums over the warp's 32 lanes (every lane gets the total); a fixed butterfly, so the same
// inputs give the same bits.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sums over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// Every thread of the block must call it (it synchronizes). `shared` holds 32 values.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : A(0);
  return warp_sum(v);
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Blocks for a grid-stride loop over `work` items with `threads` per block: enough to fill any
// GPU, capped so the grid stays legal; kernels loop over the rest.
inline unsigned grid_for(int64_t work, int threads) {
  int64_t b = (work + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > (int64_t(1) << 20)) b = int64_t(1) << 20;
  return unsigned(b);
}

}  // namespace kiln::cuda::kern

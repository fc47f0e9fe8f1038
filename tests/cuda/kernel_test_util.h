// Helpers for testing the memory-bound kernels (cuda/kernels.h) for T = float and bf16 alike:
// host data is kept as floats; for bf16 it is rounded to bf16 first (round_to<T>, gpu_from<T>,
// floats_of in cuda_test_util.h) so the CPU reference sees exactly the values the GPU does.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "kiln/cuda/kernels.h"

namespace kiln::test {

using Dtypes = ::testing::Types<float, cuda::bf16>;

inline cudaStream_t compute() {
  return cuda::streams().compute.get();
}

// Tolerance for an output of type T whose fp32 value sums sum_len terms: for bf16 the one final
// rounding to bf16 dominates.
template <typename T>
Tol tol_out(int sum_len) {
  if constexpr (std::is_same_v<T, float>)
    return tol_f32(sum_len);
  else
    return tol_bf16(1);
}

inline std::vector<uint32_t> bits_of(const std::vector<float>& f) {
  std::vector<uint32_t> b(f.size());
  std::memcpy(b.data(), f.data(), f.size() * 4);
  return b;
}

}  // namespace kiln::test

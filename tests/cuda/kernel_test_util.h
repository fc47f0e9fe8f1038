// Helpers for testing the memory-bound kernels (cuda/kernels.h) for T = float and bf16 alike:
// host data is kept as floats; for bf16 it is rounded to bf16 first (round_to<T>) so the CPU
// reference sees exactly the values the GPU does, and outputs come back as floats.
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

// The values T can hold nearest to f (f itself for float).
template <typename T>
std::vector<float> round_to(const std::vector<float>& f) {
  if constexpr (std::is_same_v<T, float>)
    return f;
  else
    return bf16_to_floats(floats_to_bf16(f));
}

template <typename T>
void set_from(cuda::DeviceBuffer<T>& d, const std::vector<float>& f) {
  ASSERT_EQ(d.size(), int64_t(f.size()));
  if constexpr (std::is_same_v<T, float>) {
    set_gpu(d, f);
  } else {
    std::vector<uint16_t> h = floats_to_bf16(f);
    cuda::to_device(d.data(), h.data(), h.size() * 2, compute());
  }
}

// A device copy of f in T (rounded to bf16 for bf16).
template <typename T>
cuda::DeviceBuffer<T> gpu_from(const std::vector<float>& f) {
  cuda::DeviceBuffer<T> d(int64_t(f.size()), "test", compute());
  set_from(d, f);
  return d;
}

template <typename T>
std::vector<float> floats_of(const cuda::DeviceBuffer<T>& d) {
  if constexpr (std::is_same_v<T, float>) {
    return to_cpu(d);
  } else {
    std::vector<uint16_t> h(size_t(d.size()));
    cuda::to_host(h.data(), d.data(), d.bytes(), compute());
    return bf16_to_floats(h);
  }
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

// Helpers for the GPU op tests: skip without a GPU (saying why), random inputs, device buffers
// poisoned with NaN before every run so an element the kernel forgot to write fails the
// comparison, and per-dtype tolerances.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/cuda/runtime.h"

// In each GPU test: skips (ctest reports the test file as skipped) when there is no GPU.
#define KILN_REQUIRE_GPU()                                     \
  do {                                                         \
    if (!::kiln::cuda::available())                            \
      GTEST_SKIP() << "no GPU, so the CUDA case did not run: " \
                   << ::kiln::cuda::unavailable_reason();      \
  } while (0)

namespace kiln::test {

inline std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A device copy of host data, on the compute stream.
template <typename T>
cuda::DeviceBuffer<T> to_gpu(const std::vector<T>& h) {
  auto s = cuda::streams().compute.get();
  cuda::DeviceBuffer<T> d(int64_t(h.size()), "test", s);
  cuda::to_device(d.data(), h.data(), h.size() * sizeof(T), s);
  return d;
}

template <typename T>
std::vector<T> to_cpu(const cuda::DeviceBuffer<T>& d) {
  std::vector<T> h(size_t(d.size()));
  cuda::to_host(h.data(), d.data(), d.bytes(), cuda::streams().compute.get());
  return h;
}

// n elements of device memory filled with 0xFF bytes: NaN as fp32/bf16/fp16, -1 as integers.
template <typename T>
cuda::DeviceBuffer<T> poisoned(int64_t n) {
  auto s = cuda::streams().compute.get();
  cuda::DeviceBuffer<T> d(n, "test", s);
  KILN_CUDA("test", cudaMemsetAsync(d.data(), 0xFF, d.bytes(), s));
  return d;
}

// Overwrites a device buffer with host data (an input that the op accumulates into).
template <typename T>
void set_gpu(cuda::DeviceBuffer<T>& d, const std::vector<T>& h) {
  cuda::to_device(d.data(), h.data(), h.size() * sizeof(T), cuda::streams().compute.get());
}

// Tolerances for comparing a GPU op with the CPU reference of the same contract: the relative
// error of one rounding in the dtype times a growth factor for the summation length.
struct Tol {
  double rel, abs;
};
inline Tol tol_f32(int sum_len = 1) {  // fp32 sums in a different order: ~sqrt(n) ulps
  double e = 1.2e-7 * (8 + 4 * std::sqrt(double(sum_len)));
  return {e, e};
}
inline Tol tol_tf32(int sum_len) {  // 10-bit mantissa inputs
  double e = 9.8e-4 * (2 + std::sqrt(double(sum_len)) / 4);
  return {e, e};
}
inline Tol tol_bf16(int sum_len = 1) {  // 8-bit mantissa
  double e = 7.8e-3 * (2 + std::sqrt(double(sum_len)) / 4);
  return {e, e};
}

// Every element within abs + rel * max(|ref|); NaN (an unwritten element) always fails. Reports
// the first bad index.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, Tol t,
                         const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (float w : want) scale = std::max(scale, double(std::fabs(w)));
  double bound = t.abs + t.rel * scale;
  for (size_t i = 0; i < got.size(); i++) {
    double d = std::fabs(double(got[i]) - double(want[i]));
    if (!(d <= bound)) {  // also catches NaN
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << ", want " << want[i]
                    << " (|diff| " << d << " > " << bound << "; " << got.size() << " elements)";
      return;
    }
  }
}

inline std::vector<float> bf16_to_floats(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); i++) f[i] = bf16_to_f32(h[i]);
  return f;
}
inline std::vector<uint16_t> floats_to_bf16(const std::vector<float>& f) {
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); i++) h[i] = f32_to_bf16(f[i]);
  return h;
}

// Host floats as device element type T (float, bf16 or f16) stores them: rounded to nearest
// even on the way to the device, exact on the way back.
template <typename T>
uint16_t bits_of_16(float x) {
  static_assert(std::is_same_v<T, cuda::bf16> || std::is_same_v<T, cuda::f16>);
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    return f32_to_bf16(x);
  } else {
    return f32_to_f16(x);
  }
}
template <typename T>
float float_of_16(uint16_t b) {
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    return bf16_to_f32(b);
  } else {
    return f16_to_f32(b);
  }
}

// The values T holds nearest to f (f itself for float): what the CPU oracle should see.
template <typename T>
std::vector<float> round_to(std::vector<float> f) {
  if constexpr (!std::is_same_v<T, float>)
    for (float& x : f) x = float_of_16<T>(bits_of_16<T>(x));
  return f;
}

// f.size() elements at dst (device), rounded to T.
template <typename T>
void floats_to_gpu(T* dst, const std::vector<float>& f) {
  auto s = cuda::streams().compute.get();
  if constexpr (std::is_same_v<T, float>) {
    cuda::to_device(dst, f.data(), f.size() * sizeof(float), s);
  } else {
    std::vector<uint16_t> h(f.size());
    for (size_t i = 0; i < f.size(); ++i) h[i] = bits_of_16<T>(f[i]);
    cuda::to_device(dst, h.data(), h.size() * sizeof(uint16_t), s);
  }
}

// n elements at src (device) as floats.
template <typename T>
std::vector<float> floats_from_gpu(const T* src, int64_t n) {
  auto s = cuda::streams().compute.get();
  std::vector<float> f(static_cast<size_t>(n));
  if constexpr (std::is_same_v<T, float>) {
    cuda::to_host(f.data(), src, f.size() * sizeof(float), s);
  } else {
    std::vector<uint16_t> h(static_cast<size_t>(n));
    cuda::to_host(h.data(), src, h.size() * sizeof(uint16_t), s);
    for (size_t i = 0; i < h.size(); ++i) f[i] = float_of_16<T>(h[i]);
  }
  return f;
}

template <typename T>
void set_from(cuda::DeviceBuffer<T>& d, const std::vector<float>& f) {
  ASSERT_EQ(d.size(), int64_t(f.size()));
  floats_to_gpu(d.data(), f);
}

// A device copy of f in T.
template <typename T>
cuda::DeviceBuffer<T> gpu_from(const std::vector<float>& f) {
  cuda::DeviceBuffer<T> d(int64_t(f.size()), "test", cuda::streams().compute.get());
  floats_to_gpu(d.data(), f);
  return d;
}

template <typename T>
std::vector<float> floats_of(const cuda::DeviceBuffer<T>& d) {
  return floats_from_gpu(d.data(), d.size());
}

}  // namespace kiln::test

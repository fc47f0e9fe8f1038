// SwiGLU and tanh-GELU. glibc's expf/tanhf do not vectorize without -ffast-math, and at
// N*F = 2048*704 they would cost more than everything else in the MLP but its GEMMs, so exp is
// a branch-free Cody-Waite + polynomial that GCC turns into AVX-512 code (about 1 ulp).
#include "kiln/ops/activation.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {

// e^x for fp32, Cephes expf: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-7 polynomial,
// 2^n built in the exponent bits. Callers only use it in 1 / (1 + e^x), so the ends are cut
// where that stops changing: below -87 it returns e^-87 (1 + e^x rounds to 1 long before), and
// from about 88.4 it returns inf (n = 128 sets the exponent to all ones; true overflow is at
// 88.72), so 1 / (1 + e^x) is exactly 0 instead of a subnormal.
inline float exp_f32(float x) {
  x = std::min(std::max(x, -87.0f), 88.7f);
  // Round x / ln2 to nearest by adding and removing 1.5 * 2^23 (std::floor does not vectorize).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in two so n * hi is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

inline float sigmoid_f32(float x) {
  return 1.0f / (1.0f + exp_f32(-x));
}

constexpr float kGeluK = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;

// Elements per task: enough work to be worth a thread.
constexpr int64_t kGrain = 1 << 13;

}  // namespace

void swiglu_forward(float* out, const float* gu, int N, int F) {
  parallel_ranges(N, std::max<int64_t>(1, kGrain / std::max(F, 1)), [=](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* gate = gu + n * 2 * F;
      const float* up = gate + F;
      float* o = out + n * F;
#pragma omp simd
      for (int f = 0; f < F; ++f) o[f] = gate[f] * sigmoid_f32(gate[f]) * up[f];
    }
  });
}

// d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g).
void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F) {
  parallel_ranges(N, std::max<int64_t>(1, kGrain / std::max(F, 1)), [=](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* gate = gu + n * 2 * F;
      const float* up = gate + F;
      const float* d = dout + n * F;
      float* dgate = dgu + n * 2 * F;
      float* dup = dgate + F;
#pragma omp simd
      for (int f = 0; f < F; ++f) {
        const float g = gate[f], s = sigmoid_f32(g);
        dgate[f] = d[f] * up[f] * (s * (1.0f + g * (1.0f - s)));
        dup[f] = d[f] * (g * s);
      }
    }
  });
}

// 0.5 x (1 + tanh(y)) == x sigmoid(2y): the same function, but without the cancellation in
// 1 + tanh(y) for negative x, and with one exp instead of a tanh.
void gelu_forward(float* out, const float* x, int64_t n) {
  parallel_ranges(n, kGrain, [=](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float v = x[i];
      const float y2 = 2.0f * kGeluK * (v + kGeluA * v * v * v);
      out[i] = v * sigmoid_f32(y2);
    }
  });
}

// d/dx [x s(2y)] = s + x s (1 - s) 2 y',  y' = k (1 + 3 a x^2).
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  parallel_ranges(n, kGrain, [=](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) {
      const float v = x[i];
      const float y2 = 2.0f * kGeluK * (v + kGeluA * v * v * v);
      const float s = sigmoid_f32(y2);
      const float dy2 = 2.0f * kGeluK * (1.0f + 3.0f * kGeluA * v * v);
      dx[i] = dout[i] * (s + v * s * (1.0f - s) * dy2);
    }
  });
}

}  // namespace kiln::ops::cpu

// Reference activations, written straight from their definitions in double and rounded once.
#include "kiln/ops/activation.h"

#include <cmath>

namespace kiln::ops::ref {

namespace {
double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
constexpr double kGeluK = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;
}  // namespace

void swiglu_forward(float* out, const float* gu, int N, int F) {
  for (int n = 0; n < N; ++n) {
    const float* gate = gu + int64_t(n) * 2 * F;
    const float* up = gate + F;
    for (int f = 0; f < F; ++f) {
      double g = gate[f];
      out[int64_t(n) * F + f] = float(g * sigmoid(g) * up[f]);
    }
  }
}

// d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g).
void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F) {
  for (int n = 0; n < N; ++n) {
    const float* gate = gu + int64_t(n) * 2 * F;
    const float* up = gate + F;
    float* dgate = dgu + int64_t(n) * 2 * F;
    float* dup = dgate + F;
    for (int f = 0; f < F; ++f) {
      double g = gate[f], s = sigmoid(g), d = dout[int64_t(n) * F + f];
      dgate[f] = float(d * up[f] * s * (1.0 + g * (1.0 - s)));
      dup[f] = float(d * g * s);
    }
  }
}

// 0.5 x (1 + tanh(y)) is written as x sigmoid(2y), the same function: even in double,
// 1 + tanh(y) cancels to 0 for y < -19, while the true value (~e^2y) is still a normal float.
void gelu_forward(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double v = x[i];
    out[i] = float(v * sigmoid(2.0 * kGeluK * (v + kGeluA * v * v * v)));
  }
}

// With s = sigmoid(2y), y = k (x + a x^3): d/dx [x s] = s + x s (1 - s) 2k (1 + 3 a x^2).
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double v = x[i];
    double s = sigmoid(2.0 * kGeluK * (v + kGeluA * v * v * v));
    double grad = s + v * s * (1.0 - s) * 2.0 * kGeluK * (1.0 + 3.0 * kGeluA * v * v);
    dx[i] = float(dout[i] * grad);
  }
}

}  // namespace kiln::ops::ref

// Reference RoPE (HF rotate-half): for i < D/2, with c = cos[pos][i], s = sin[pos][i],
//   y_i = x_i c - x_{i+D/2} s,   y_{i+D/2} = x_{i+D/2} c + x_i s.
// The rotation is orthogonal, so its backward is the rotation by -angle.
#include "kiln/ops/rope.h"

#include <cstdint>

namespace kiln::ops::ref {

namespace {
// sign = +1 rotates by +angle (forward), -1 by -angle (backward).
void rotate(float* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
            const float* sin, float sign) {
  const int half = D / 2;
  for (int n = 0; n < N; ++n) {
    const float* c = cos + int64_t(pos[n]) * half;
    const float* s = sin + int64_t(pos[n]) * half;
    for (int h = 0; h < heads; ++h) {
      float* xh = x + int64_t(n) * stride + int64_t(h) * D;
      for (int i = 0; i < half; ++i) {
        const float a = xh[i], b = xh[i + half], si = sign * s[i];
        xh[i] = a * c[i] - b * si;
        xh[i + half] = b * c[i] + a * si;
      }
    }
  }
}
}  // namespace

void rope_forward(float* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
                  const float* sin) {
  rotate(x, N, heads, D, stride, pos, cos, sin, 1.0f);
}

void rope_backward(float* dx, int N, int heads, int D, int stride, const int* pos, const float* cos,
                   const float* sin) {
  rotate(dx, N, heads, D, stride, pos, cos, sin, -1.0f);
}

}  // namespace kiln::ops::ref

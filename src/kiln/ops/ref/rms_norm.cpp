// Reference RMSNorm. Reductions use double accumulators (the oracle is the exact statistic to
// within one fp32 rounding); the saved rstd is fp32 as the contract says.
#include "kiln/ops/rms_norm.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace kiln::ops::ref {

void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                      float eps) {
  for (int n = 0; n < N; ++n) {
    const float* xr = x + int64_t(n) * C;
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += double(xr[c]) * xr[c];
    float r = float(1.0 / std::sqrt(ss / C + eps));
    rstd[n] = r;
    // Hugging Face's order: normalize, then scale by w.
    for (int c = 0; c < C; ++c) out[int64_t(n) * C + c] = w[c] * (xr[c] * r);
  }
}

// y_i = w_i x_i r with r = (mean(x^2) + eps)^-1/2, so dr/dx_i = -r^3 x_i / C and
//   dx_i = r (g_i - x_i r^2 sum_j(g_j x_j) / C),  g = dout * w;   dw_i = sum_n dout_i x_i r.
void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int N, int C) {
  std::vector<double> dw_acc(C, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* xr = x + int64_t(n) * C;
    const float* dr = dout + int64_t(n) * C;
    double r = rstd[n];
    double gx = 0.0;
    for (int c = 0; c < C; ++c) gx += double(dr[c]) * w[c] * xr[c];
    for (int c = 0; c < C; ++c) {
      double g = double(dr[c]) * w[c];
      float& d = dx[int64_t(n) * C + c];
      d = float(d + r * (g - xr[c] * r * r * gx / C));
      dw_acc[c] += double(dr[c]) * xr[c] * r;
    }
  }
  for (int c = 0; c < C; ++c) dw[c] = float(dw[c] + dw_acc[c]);
}

}  // namespace kiln::ops::ref

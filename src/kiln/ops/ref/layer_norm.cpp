// Reference LayerNorm (biased variance, two-pass). Reductions use double accumulators; the saved
// mean and rstd are fp32 as the contract says.
#include "kiln/ops/layer_norm.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace kiln::ops::ref {

void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C, float eps) {
  for (int n = 0; n < N; ++n) {
    const float* xr = x + int64_t(n) * C;
    double s = 0.0;
    for (int c = 0; c < C; ++c) s += xr[c];
    double mu = s / C, var = 0.0;
    for (int c = 0; c < C; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= C;
    double r = 1.0 / std::sqrt(var + eps);
    mean[n] = float(mu);
    rstd[n] = float(r);
    for (int c = 0; c < C; ++c) out[int64_t(n) * C + c] = float((xr[c] - mu) * r * w[c] + b[c]);
  }
}

// With xhat = (x - mean) rstd and g = dout * w:
//   dx = rstd (g - mean(g) - xhat mean(g xhat)),  dw = sum_n dout xhat,  db = sum_n dout.
void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N, int C) {
  std::vector<double> dw_acc(C, 0.0), db_acc(C, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* xr = x + int64_t(n) * C;
    const float* dr = dout + int64_t(n) * C;
    double mu = mean[n], r = rstd[n];
    double g_mean = 0.0, gx_mean = 0.0;
    for (int c = 0; c < C; ++c) {
      double g = double(dr[c]) * w[c];
      g_mean += g;
      gx_mean += g * (xr[c] - mu) * r;
    }
    g_mean /= C;
    gx_mean /= C;
    for (int c = 0; c < C; ++c) {
      double xhat = (xr[c] - mu) * r;
      double g = double(dr[c]) * w[c];
      float& d = dx[int64_t(n) * C + c];
      d = float(d + r * (g - g_mean - xhat * gx_mean));
      dw_acc[c] += dr[c] * xhat;
      db_acc[c] += dr[c];
    }
  }
  for (int c = 0; c < C; ++c) {
    dw[c] = float(dw[c] + dw_acc[c]);
    db[c] = float(db[c] + db_acc[c]);
  }
}

}  // namespace kiln::ops::ref

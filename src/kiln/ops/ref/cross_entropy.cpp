// Reference LM head + cross-entropy: one row of logits at a time, double accumulators, the
// gradient formed explicitly and multiplied out with plain loops.
#include "kiln/ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops::ref {

void lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h, const float* w,
                           const int* targets, int N, int C, int V, float grad_scale) {
  KILN_CHECK(!dh || dw, "cross_entropy", "dh given without dw: the backward needs both");
  std::vector<double> logits(V), dlogits(V), dh_row(C);
  // dw's sum over rows is kept in double and added to dw once.
  std::vector<double> dw_acc(dh ? int64_t(V) * C : 0, 0.0);
  for (int n = 0; n < N; ++n) {
    const float* hn = h + int64_t(n) * C;
    const int y = targets[n];
    KILN_CHECK(y < V, "cross_entropy", "target ", y, " at row ", n,
               " is outside the vocabulary of ", V);
    if (y < 0) {
      // Ignored token: no loss and no gradient (dh still overwritten, with zeros).
      losses[n] = 0.0f;
      if (dh) std::fill(dh + int64_t(n) * C, dh + int64_t(n + 1) * C, 0.0f);
      continue;
    }
    double m = -INFINITY;
    for (int v = 0; v < V; ++v) {
      double s = 0.0;
      for (int c = 0; c < C; ++c) s += double(hn[c]) * w[int64_t(v) * C + c];
      logits[v] = s;
      m = std::max(m, s);
    }
    double sum = 0.0;
    for (int v = 0; v < V; ++v) sum += std::exp(logits[v] - m);
    const double lse = m + std::log(sum);
    losses[n] = float(lse - logits[y]);
    if (!dh) continue;
    for (int v = 0; v < V; ++v)
      dlogits[v] = (std::exp(logits[v] - lse) - (v == y ? 1.0 : 0.0)) * grad_scale;
    std::fill(dh_row.begin(), dh_row.end(), 0.0);
    for (int v = 0; v < V; ++v)
      for (int c = 0; c < C; ++c) {
        dh_row[c] += dlogits[v] * w[int64_t(v) * C + c];
        dw_acc[int64_t(v) * C + c] += dlogits[v] * hn[c];
      }
    for (int c = 0; c < C; ++c) dh[int64_t(n) * C + c] = float(dh_row[c]);
  }
  for (size_t i = 0; i < dw_acc.size(); ++i) dw[i] = float(dw[i] + dw_acc[i]);
}

}  // namespace kiln::ops::ref

// Reference GEMM and linear layer: triple loops with double accumulators, rounded to fp32 once,
// so the oracle is the exact product to within one rounding.
#include "kiln/ops/matmul.h"

#include <cstdint>

namespace kiln::ops::ref {

void gemm(float* c, const float* a, const float* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta) {
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        double aik = trans_a ? a[int64_t(k) * M + i] : a[int64_t(i) * K + k];
        double bkj = trans_b ? b[int64_t(j) * K + k] : b[int64_t(k) * N + j];
        acc += aik * bkj;
      }
      float& cij = c[int64_t(i) * N + j];
      // As in BLAS, beta == 0 means C is not read (so garbage or NaN in C does not propagate).
      cij = beta == 0.0f ? float(alpha * acc) : float(alpha * acc + double(beta) * cij);
    }
  }
}

// W[o][i] in either layout.
static inline float weight_at(const float* w, int o, int i, int IN, int OUT, WeightLayout layout) {
  return layout == WeightLayout::out_in ? w[int64_t(o) * IN + i] : w[int64_t(i) * OUT + o];
}

void linear_forward(float* y, const float* x, const float* w, const float* bias, int N, int IN,
                    int OUT, WeightLayout layout) {
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OUT; ++o) {
      double acc = bias ? bias[o] : 0.0;
      for (int i = 0; i < IN; ++i)
        acc += double(x[int64_t(n) * IN + i]) * weight_at(w, o, i, IN, OUT, layout);
      y[int64_t(n) * OUT + o] = float(acc);
    }
  }
}

void linear_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int N, int IN, int OUT, WeightLayout layout) {
  if (dx) {
    for (int n = 0; n < N; ++n) {
      for (int i = 0; i < IN; ++i) {
        double acc = 0.0;
        for (int o = 0; o < OUT; ++o)
          acc += double(dy[int64_t(n) * OUT + o]) * weight_at(w, o, i, IN, OUT, layout);
        dx[int64_t(n) * IN + i] = float(acc);
      }
    }
  }
  if (dw) {
    for (int o = 0; o < OUT; ++o) {
      for (int i = 0; i < IN; ++i) {
        double acc = 0.0;
        for (int n = 0; n < N; ++n)
          acc += double(dy[int64_t(n) * OUT + o]) * x[int64_t(n) * IN + i];
        float& g =
            layout == WeightLayout::out_in ? dw[int64_t(o) * IN + i] : dw[int64_t(i) * OUT + o];
        g = float(g + acc);
      }
    }
  }
  if (dbias) {
    for (int o = 0; o < OUT; ++o) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += dy[int64_t(n) * OUT + o];
      dbias[o] = float(dbias[o] + acc);
    }
  }
}

}  // namespace kiln::ops::ref

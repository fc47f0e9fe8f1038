// Reference bf16 GEMM: the fp32 reference's triple loop on widened bf16 inputs, double sums
// rounded to fp32 once, so the oracle is the exact product of the bf16 values to one rounding.
#include "kiln/ops/matmul_bf16.h"

#include "kiln/core/dtype.h"

namespace kiln::ops::ref {

void gemm_bf16(float* c, const uint16_t* a, const uint16_t* b, int M, int N, int K, bool trans_a,
               bool trans_b, float alpha, float beta) {
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        double aik = bf16_to_f32(trans_a ? a[int64_t(k) * M + i] : a[int64_t(i) * K + k]);
        double bkj = bf16_to_f32(trans_b ? b[int64_t(j) * K + k] : b[int64_t(k) * N + j]);
        acc += aik * bkj;
      }
      float& cij = c[int64_t(i) * N + j];
      cij = beta == 0.0f ? float(alpha * acc) : float(alpha * acc + double(beta) * cij);
    }
  }
}

}  // namespace kiln::ops::ref

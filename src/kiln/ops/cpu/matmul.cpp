// GEMM and linear layer on OpenBLAS (its OpenMP build, so it shares kiln's thread pool). Every
// product is one cblas_sgemm; only the bias broadcast and the bias gradient are kiln loops.
#include "kiln/ops/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

void gemm(float* c, const float* a, const float* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta) {
  if (M <= 0 || N <= 0) return;
  // Leading dimensions of the stored (not the transposed) matrices; BLAS wants them >= 1.
  const int lda = std::max(1, trans_a ? M : K), ldb = std::max(1, trans_b ? K : N);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, a, lda, b, ldb, beta, c, N);
}

void gemm_ld(float* c, int ldc, const float* a, int lda, const float* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, float alpha, float beta) {
  if (M <= 0 || N <= 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

void linear_forward(float* y, const float* x, const float* w, const float* bias, int N, int IN,
                    int OUT, WeightLayout layout) {
  if (bias) {
    // Broadcast the bias into y and let the GEMM accumulate on top (beta = 1): one pass over y.
    parallel_ranges(N, std::max<int64_t>(1, 16384 / std::max(OUT, 1)), [=](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n) std::copy(bias, bias + OUT, y + n * OUT);
    });
  }
  // out_in: y = x W^T with W (OUT,IN); in_out: y = x W with W (IN,OUT).
  gemm(y, x, w, N, OUT, IN, false, layout == WeightLayout::out_in, 1.0f, bias ? 1.0f : 0.0f);
}

void linear_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int N, int IN, int OUT, WeightLayout layout) {
  const bool out_in = layout == WeightLayout::out_in;
  // dx (N,IN) = dy (N,OUT) @ W  (W^T when W is stored (IN,OUT)).
  if (dx) gemm(dx, dy, w, N, IN, OUT, false, !out_in, 1.0f, 0.0f);
  if (dw) {
    if (out_in)
      gemm(dw, dy, x, OUT, IN, N, true, false, 1.0f, 1.0f);  // dW (OUT,IN) += dy^T x
    else
      gemm(dw, x, dy, IN, OUT, N, true, false, 1.0f, 1.0f);  // dW (IN,OUT) += x^T dy
  }
  if (dbias) {
    // Split over columns, not rows: each column is summed in row order by one thread, so the
    // result is the same for any thread count (bit-exact resume) with no partial buffers.
    constexpr int kBlock = 16;  // one AVX-512 vector; whole blocks keep threads off shared lines
    const int64_t blocks = (OUT + kBlock - 1) / kBlock;
    parallel_ranges(blocks, std::max<int64_t>(1, 4096 / std::max(N, 1)), [=](int64_t b, int64_t e) {
      const int64_t c0 = b * kBlock, c1 = std::min<int64_t>(OUT, e * kBlock);
      for (int64_t n = 0; n < N; ++n) {
        const float* row = dy + n * OUT;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dbias[c] += row[c];
      }
    });
  }
}

}  // namespace kiln::ops::cpu

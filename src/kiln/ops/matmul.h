// GEMM and the linear layer. Row-major everywhere. Cost: 2*M*N*K FLOPs; cpu/ calls OpenBLAS.
#pragma once

namespace kiln::ops {

// Where a linear layer's weight keeps its rows: nn.Linear stores W as (OUT, IN); GPT-2's Conv1D
// stores it as (IN, OUT). Hugging Face checkpoints use both, so both are first-class.
enum class WeightLayout { out_in, in_out };

namespace ref {
// C (M,N) = alpha * op(A) @ op(B) + beta * C, op(X) = X^T when trans_X.
// A is (M,K) or, transposed, (K,M); B is (K,N) or, transposed, (N,K).
void gemm(float* c, const float* a, const float* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta);
// y (N,OUT) = x (N,IN) @ W^T + bias (bias may be null).
void linear_forward(float* y, const float* x, const float* w, const float* bias, int N, int IN,
                    int OUT, WeightLayout layout);
// dx (N,IN) = dy @ W (overwritten; skipped if dx is null); dw += dy^T x in w's layout
// (skipped if null: a frozen weight); dbias (OUT) += column sums of dy (skipped if null).
void linear_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int N, int IN, int OUT, WeightLayout layout);
}  // namespace ref

namespace cpu {
// One cblas_sgemm each. dbias is summed per column in row order: the same bits for any
// thread count.
void gemm(float* c, const float* a, const float* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta);
// The same on submatrices: lda, ldb, ldc are the row strides of the stored matrices (a column
// slice of a wider one, e.g. one projection's columns of a fused q|k|v output).
void gemm_ld(float* c, int ldc, const float* a, int lda, const float* b, int ldb, int M, int N,
             int K, bool trans_a, bool trans_b, float alpha, float beta);
void linear_forward(float* y, const float* x, const float* w, const float* bias, int N, int IN,
                    int OUT, WeightLayout layout);
void linear_backward(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                     const float* w, int N, int IN, int OUT, WeightLayout layout);
}  // namespace cpu

}  // namespace kiln::ops

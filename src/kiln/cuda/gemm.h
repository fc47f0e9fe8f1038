// GEMMs on the GPU through cuBLASLt, row-major like ops/matmul.h (cuBLASLt is column-major: a
// row-major C = A B is computed as the column-major C^T = B^T A^T, without copies).
// Input types: fp32 (optionally TF32 tensor cores), bf16, fp16; C/D in fp32 or the input type;
// fp32 accumulation always. Epilogues fuse the bias add and GELU into the GEMM.
// The cuBLASLt handle, a 32 MiB workspace per stream and the chosen algorithm per shape are
// cached. Every cuBLASLt call is checked; a failure names the call, the op and the shape.
#pragma once

#include "kiln/cuda/runtime.h"
#include "kiln/ops/matmul.h"

namespace kiln::cuda {

// fp32 GEMMs with fp32 inputs use TF32 tensor cores when on (off by default: exact fp32).
void set_tf32(bool on);
bool tf32();

enum class Epilogue {
  none,
  bias,       // D = AB + bias (bias fp32, per output column)
  gelu,       // D = gelu(AB), tanh approximation (GPT-2's gelu_new)
  bias_gelu,  // D = gelu(AB + bias); with `aux` also stores the pre-activation AB + bias there
};
// With gelu and bias_gelu, `aux` (M,N) in TOut (if given) receives the GELU's input. cuBLASLt
// fuses the epilogue when it has a kernel for it (the aux form needs N % 8 == 0); otherwise the
// GEMM runs plain and one elementwise kernel applies bias, aux and GELU (same contract; with a
// bf16 D the pre-activation is rounded to bf16 once more before the bias is added).

// C (M,N) = alpha * op(A) @ op(B) + beta * C, then the epilogue. op(X) = X^T when trans_X; A is
// (M,K) or (K,M), B is (K,N) or (N,K). beta == 0: C is not read. (TIn, TOut) pairs instantiated:
// (float, float), (bf16, float), (bf16, bf16), (f16, float), (f16, f16).
template <typename TIn, typename TOut>
void gemm(TOut* c, const TIn* a, const TIn* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta, cudaStream_t s, Epilogue ep = Epilogue::none,
          const float* bias = nullptr, TOut* aux = nullptr);

// How many gemm calls so far ran their epilogue as the separate kernel (for benchmarks and tests:
// on the shapes that matter it should stay 0).
int64_t unfused_epilogues();

// The linear layer of ops/matmul.h. T is float or bf16 (x, w, y all T). y (N,OUT) = x W^T + bias,
// optionally followed by GELU (then `pre` (N,OUT), if given, receives x W^T + bias for backward).
template <typename T>
void linear_forward(T* y, const T* x, const T* w, const float* bias, int N, int IN, int OUT,
                    ops::WeightLayout layout, cudaStream_t s, bool gelu = false, T* pre = nullptr);
// dx (N,IN) = dy W (overwritten; skipped if null), dw (fp32, w's layout) += dy^T x (skipped if
// null), dbias (OUT, fp32) += column sums of dy (skipped if null; fixed-order sums).
template <typename T>
void linear_backward(T* dx, float* dw, float* dbias, const T* dy, const T* x, const T* w, int N,
                     int IN, int OUT, ops::WeightLayout layout, cudaStream_t s);

// dbias (OUT) += column sums of dy (N,OUT), T float or bf16, summed in fp32 over fixed chunks of
// rows whose partials are added in chunk order: the same bits on every run.
template <typename T>
void bias_backward(float* dbias, const T* dy, int N, int OUT, cudaStream_t s);

namespace detail {
// The unfused epilogue (gemm_kernels.cu): per element of c (M,N), v = c + bias[col] (bias may be
// null); aux (may be null) = v; c = gelu ? gelu(v) : v. T is float, bf16 or f16.
template <typename T>
void apply_epilogue(T* c, T* aux, const float* bias, int M, int N, bool gelu, cudaStream_t s);
}  // namespace detail

}  // namespace kiln::cuda

// The memory-bound ops on the GPU, each behind the contract of its CPU header in ops/ (named on
// each group below): same arguments in the same order, device pointers, plus the stream. T is the
// activation type, float or bf16 (both instantiated); inside, every kernel computes in fp32.
// Small parameters (norm weights and biases, embedding tables) and their gradients are fp32.
// Accumulating outputs (+=) accumulate in fp32 and round once into T.
//
// Determinism: every reduction (weight gradients, sums of squares) is split into fixed chunks
// whose partial sums are added in a fixed order, so a run repeats bit for bit on the same GPU.
#pragma once

#include <cstdint>

#include "kiln/cuda/runtime.h"
#include "kiln/ops/adamw.h"

namespace kiln::cuda {

// ---- ops/embedding.h (ids in [0, V): not checked on the device) ----
// Backward sorts the ids (CUB radix sort, scratch from the pool) and sums each id's rows in order
// of n: deterministic, for fp32 the bits of ops::cpu::embedding_backward.
template <typename T>
void embedding_forward(T* out, const int* ids, const float* table, int N, int C, bool accumulate,
                       cudaStream_t s);
template <typename T>
void embedding_backward(float* dtable, const T* dout, const int* ids, int N, int C, cudaStream_t s);

// ---- ops/rms_norm.h (dx +=, dw +=) ----
// Saved statistics (rstd, mean) may be null in forward (inference). Backward's dw/db go through
// pool scratch of at most 2 MiB / sizeof(T) per weight vector (chunk partials).
template <typename T>
void rms_norm_forward(T* out, float* rstd, const T* x, const float* w, int N, int C, float eps,
                      cudaStream_t s);
template <typename T>
void rms_norm_backward(T* dx, float* dw, const T* dout, const T* x, const float* w,
                       const float* rstd, int N, int C, cudaStream_t s);

// ---- ops/layer_norm.h (dx +=, dw +=, db +=) ----
template <typename T>
void layer_norm_forward(T* out, float* mean, float* rstd, const T* x, const float* w,
                        const float* b, int N, int C, float eps, cudaStream_t s);
template <typename T>
void layer_norm_backward(T* dx, float* dw, float* db, const T* dout, const T* x, const float* w,
                         const float* mean, const float* rstd, int N, int C, cudaStream_t s);

// ---- ops/rope.h (in place; pos (N) in [0, max_pos); cos/sin (max_pos, D/2) on the device) ----
template <typename T>
void rope_forward(T* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
                  const float* sin, cudaStream_t s);
template <typename T>
void rope_backward(T* dx, int N, int heads, int D, int stride, const int* pos, const float* cos,
                   const float* sin, cudaStream_t s);

// ---- ops/activation.h (dgu, dx overwritten) ----
template <typename T>
void swiglu_forward(T* out, const T* gu, int N, int F, cudaStream_t s);
template <typename T>
void swiglu_backward(T* dgu, const T* dout, const T* gu, int N, int F, cudaStream_t s);
template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, cudaStream_t s);
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, cudaStream_t s);

// ---- ops/elementwise.h ----
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t s);  // out = a + b
void scale(float* x, float v, int64_t n, cudaStream_t s);             // x *= v
// *result (one double on the device) = sum of x^2, in double, in a fixed order (depends on n only).
void sum_squares(double* result, const float* x, int64_t n, cudaStream_t s);

// ---- conversions (ops/matmul_bf16.h's f32_to_bf16 / bf16_to_f32: round to nearest even) ----
// Bit-exact kiln::f32_to_bf16 of core/dtype.h (NaN stays NaN with its sign and top payload).
void f32_to_bf16(bf16* dst, const float* src, int64_t n, cudaStream_t s);
void bf16_to_f32(float* dst, const bf16* src, int64_t n, cudaStream_t s);

// ---- ops/adamw.h, multi-tensor ----
// The flat parameter buffer is cut into segments (one per tensor); weight decay applies to the
// segments with decay set. One launch updates every segment: param, m, v (total) in place from
// grad * grad_mul (grad_mul folds in clipping and loss-scale division). When param_bf16 is not
// null it receives the updated parameters rounded to bf16 (the GEMMs' copy), in the same pass.
struct AdamWSegment {
  int64_t offset, n;
  int decay;  // 1: apply p.weight_decay; 0: no decay (norms, biases, embeddings)
};
// The segments, uploaded once (they do not change during training): in order of offset, without
// overlap (gaps are left alone); cut into chunks of 4096 elements, one block each.
class AdamWSegments {
 public:
  AdamWSegments(const AdamWSegment* segs, int count, cudaStream_t s);
  int count() const { return count_; }
  int64_t total() const { return total_; }  // offset + n of the last segment
  const void* device() const { return dev_.data(); }
  int chunks() const { return chunks_; }

 private:
  DeviceBuffer<uint8_t> dev_;  // the chunk table: (begin, length, decay) per block of the launch
  int count_ = 0, chunks_ = 0;
  int64_t total_ = 0;
};
void adamw_step(float* param, const float* grad, float* m, float* v, const AdamWSegments& segs,
                const ops::AdamWParams& p, float grad_mul, bf16* param_bf16, cudaStream_t s);

}  // namespace kiln::cuda

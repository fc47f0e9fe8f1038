// Linear layers (and the LM head) under a training precision. fp32 calls the fp32 ops; bf16
// rounds the GEMM inputs to bf16 and accumulates in fp32 (ops/matmul_bf16.h); fp16 rounds the
// GEMM inputs to fp16 values and computes in fp32. The low-precision weight copy is made once per
// optimizer step (refresh); activations are rounded on the fly, so what is saved for backward
// stays fp32 and one code path serves every precision. Under QLoRA the linear weights come from
// an Nf4Base instead: each GEMM dequantizes its weight (to bf16 or fp32) into scratch first, and
// the weight's gradient is never asked for (the base is frozen).
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/precision.h"
#include "kiln/ops/cross_entropy.h"
#include "kiln/ops/matmul.h"

namespace kiln {

class Nf4Base;

class MixedLinear {
 public:
  // nf4: the linear weights' NF4 copies (QLoRA), or null. fp32 or bf16 only with nf4.
  explicit MixedLinear(Precision p, const Nf4Base* nf4 = nullptr);
  Precision precision() const { return p_; }

  // Rounds the flat weights (P) into the low-precision copy (bf16, or fp16 values in fp32); with
  // nf4, only the weights it does not hold.
  void refresh(const Tensor& weights);

  // y (N,OUT) = x (N,IN) @ W^T + b. `w` points into the flat fp32 weights given to refresh.
  void forward(float* y, const float* x, const float* w, const float* b, int N, int IN, int OUT,
               ops::WeightLayout layout);
  // dx (N,IN) = dy @ W (overwritten; skipped if null); dw += dy^T x; db += colsum(dy).
  void backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                int N, int IN, int OUT, ops::WeightLayout layout);
  // The fused LM head + cross-entropy (ops/cross_entropy.h) at this precision; with a shard, the
  // vocabulary-parallel form (w holds the shard's V rows).
  void lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h, const float* w,
                             const int* targets, int N, int C, int V, float grad_scale,
                             const ops::VocabShard* shard = nullptr);
  size_t bytes() const;

 private:
  const uint16_t* bf16_of(const float* w) const { return bf16_.data<uint16_t>() + (w - base_); }
  const float* fp16_of(const float* w) const { return fp16_.f32() + (w - base_); }
  uint16_t* to_bf16(std::vector<uint16_t>& buf, const float* x, int64_t n);
  float* to_fp16(std::vector<float>& buf, const float* x, int64_t n);
  // The GEMM weight at w (n values) at the precision: the copy refresh() made, or under QLoRA the
  // NF4 weights dequantized into scratch.
  const uint16_t* weight_bf16(const float* w, int64_t n);
  const float* weight_f32(const float* w, int64_t n);

  Precision p_;
  const Nf4Base* nf4_;
  const float* base_ = nullptr;  // the fp32 weights refresh() saw
  Tensor bf16_, fp16_;           // (P) low-precision weight copies
  std::vector<uint16_t> xa_, xb_;
  std::vector<float> fa_, fb_;
  std::vector<uint16_t> wb_;  // a dequantized NF4 weight
  std::vector<float> wf_;
};

}  // namespace kiln

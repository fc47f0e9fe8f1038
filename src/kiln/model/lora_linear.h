// The low-rank term of one adapted projection in a training step (CPU, fp32): what TrainState
// adds to the frozen base's GEMM output in forward, and the adapter's gradients and the input
// gradient's share in backward. With s = LoraConfig::scaling() and d() PEFT's dropout on the
// adapter's input (inverted, rate p; the identity outside training),
//   forward    y[:, col0 : col0 + out] += s d(x) A^T B^T
//   backward   u = d(x) A^T, du = s dy B:  dB += s dy^T u,  dA += du^T d(x),  dx += d(du A)
// where dy is the projection's columns of the fused output's gradient. u (N x r) is kept from
// forward for backward, per projection; d(x) is rebuilt from x and the mask. With bf16, every
// GEMM takes bf16-rounded inputs and accumulates in fp32 (ops/matmul_bf16.h), as the base's GEMMs
// do at that precision; u, the sums and the gradients stay fp32. Each
// projection's dropout mask is a hash of (seed, the slot's offset, the element), so backward and
// recomputation see the forward's mask without storing it.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "kiln/model/lora.h"

namespace kiln {

struct LoraScratch {
  std::vector<float> xd, du, tmp;
  std::vector<uint16_t> xb, wb, ub, yb;               // bf16 GEMM inputs
  std::unordered_map<int64_t, std::vector<float>> u;  // by the slot's offset: its forward's u
  size_t bytes() const;
};

struct LoraTerm {
  const float* w;     // LoraWeights' flat buffer
  float* g;           // its gradient (backward)
  int r;              // the rank
  float scaling;      // s
  float dropout;      // p: 0 outside training steps
  uint64_t seed;      // the dropout masks' seed for this step
  bool bf16 = false;  // the GEMMs' inputs rounded to bf16, fp32 accumulation (train.precision bf16)
};

// x (N, in): the projection's input; y (N, ldy): the fused GEMM's output.
void lora_forward(const LoraSlot& slot, const LoraTerm& t, const float* x, int N, float* y, int ldy,
                  LoraScratch& scratch);
// dy (N, ldy): the fused output's gradient; dx (N, in): the input's gradient, added to. The
// slot's lora_forward of the same batch and weights must have run.
void lora_backward(const LoraSlot& slot, const LoraTerm& t, const float* x, const float* dy,
                   int ldy, float* dx, int N, LoraScratch& scratch);

}  // namespace kiln

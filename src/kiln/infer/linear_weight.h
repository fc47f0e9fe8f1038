// A linear layer's weight for inference: fp32 pointing into Model::weights() in the family's
// layout ((OUT, IN) like nn.Linear, or GPT-2's Conv1D (IN, OUT)), or a weight-only quantized
// matrix (quant::QTensor, always (OUT, IN) rows); plus an optional bias. The forward passes only
// ever call linear(); loading quantized weights changes the setup, not the model.
#pragma once

#include "kiln/ops/matmul.h"
#include "kiln/quant/qtensor.h"

namespace kiln {

struct LinearWeight {
  const float* f32 = nullptr;         // (OUT, IN) or (IN, OUT) per layout; null when quantized
  const quant::QTensor* q = nullptr;  // (OUT, IN) rows of blocks, or null when fp32
  int out = 0, in = 0;
  const float* bias = nullptr;                           // (OUT) or null
  ops::WeightLayout layout = ops::WeightLayout::out_in;  // of f32
};

// y (N, OUT) = x (N, IN) @ W^T + bias. fp32: register-tiled kernels streaming W once for
// N <= 32 (decode; bitwise the same per row for any N, in either layout), one OpenBLAS GEMM
// above; quantized: quant::cpu::matmul. Cost 2*N*OUT*IN FLOPs, reading W once.
void linear(float* y, const float* x, const LinearWeight& w, int N);

}  // namespace kiln

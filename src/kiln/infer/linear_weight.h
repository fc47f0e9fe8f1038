// A linear layer's weight for inference: fp32 in nn.Linear layout (OUT, IN), pointing into
// Model::weights(), or a weight-only quantized matrix (quant::QTensor, same (OUT, IN) rows).
// The engine only ever calls linear(); loading quantized weights changes the setup, not the model.
#pragma once

#include "kiln/quant/qtensor.h"

namespace kiln {

struct LinearWeight {
  const float* f32 = nullptr;         // (OUT, IN), or null when quantized
  const quant::QTensor* q = nullptr;  // (OUT, IN) rows of blocks, or null when fp32
  int out = 0, in = 0;
};

// y (N, OUT) = x (N, IN) @ W^T. fp32: a register-tiled kernel streaming W once for N <= 32
// (decode; bitwise the same per row for any N), one OpenBLAS GEMM above; quantized:
// quant::cpu::matmul. Cost 2*N*OUT*IN FLOPs, reading W once.
void linear(float* y, const float* x, const LinearWeight& w, int N);

}  // namespace kiln

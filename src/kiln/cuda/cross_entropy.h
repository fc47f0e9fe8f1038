// The LM head fused with softmax cross-entropy on the GPU: the contract of ops/cross_entropy.h
// (ref::lm_head_cross_entropy). Rows are processed in chunks so that only (chunk, V) fp32 logits
// exist at once (taken from the device pool): per chunk, logits = h W^T (cuBLASLt), one kernel
// for each row's log-sum-exp, loss and, when training, dlogits in place, then dh = dlogits W and
// dw += dlogits^T h (cuBLASLt).
#pragma once

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {

// h (N,C), w (V,C) in T (float or bf16; bf16 GEMMs accumulate in fp32, and dlogits is rounded
// to bf16 for the two backward GEMMs); targets (N) on the device, < 0 ignored (loss 0, no
// gradient). losses (N) fp32. When dh is not null: dh (N,C) overwritten, dw (V,C) fp32 +=, both
// scaled by grad_scale. A target >= V cannot be reported without a device sync: its row gets a
// NaN loss (and no gradient), which the training loop's loss check catches.
// chunk_rows: rows per chunk; 0 picks it so the chunk's logits take at most 1 GiB (tests set
// it to force several chunks).
template <typename T>
void lm_head_cross_entropy(float* losses, T* dh, float* dw, const T* h, const T* w,
                           const int* targets, int N, int C, int V, float grad_scale,
                           cudaStream_t s, int chunk_rows = 0);

}  // namespace kiln::cuda

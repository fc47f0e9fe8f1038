// Timings of single GPU ops for `kiln bench attention`: CUDA events around repeated launches on
// random inputs, median over repetitions.
#pragma once

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {

struct AttentionTiming {
  double fwd_ms = 0, bwd_ms = 0;  // medians
  double fwd_tflops = 0, fwd_bwd_tflops = 0;
};

// Causal attention forward and backward at (B, T, H, K, D), bf16 or fp32. FLOPs counted as
// FlashAttention's benchmarks do: forward 4*B*H*T*T*D / 2 (causal), backward 2.5x forward.
AttentionTiming time_attention(int B, int T, int H, int K, int D, bool bf16, int reps);

}  // namespace kiln::cuda

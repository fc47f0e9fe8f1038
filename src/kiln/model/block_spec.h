// What one transformer block of a model family computes, chosen once from the config: the norm
// (RMSNorm / LayerNorm), the positions (RoPE on q and k / a learned table added to the embedding),
// the MLP (SwiGLU over gate|up / GELU) and the weights' storage layout. The inference forward
// passes (infer/forward_pass.h, CPU and CUDA) ask block_spec() instead of testing cfg.arch.
// model/decoder.cpp, the engine's oracle, keeps its own branches on purpose: it must not share a
// mistake made here.
#pragma once

#include "kiln/model/config.h"
#include "kiln/ops/matmul.h"

namespace kiln {

enum class NormKind { rms, layer };         // Llama: RMSNorm (weight); GPT-2: LayerNorm (w, b)
enum class PositionKind { rope, learned };  // Llama: RoPE on q|k; GPT-2: wpe added to wte
enum class MlpKind { swiglu, gelu };        // Llama: silu(gate) * up over (2F); GPT-2: GELU (F)

struct BlockSpec {
  NormKind norm;
  PositionKind positions;
  MlpKind mlp;
  ops::WeightLayout layout;  // Llama (OUT, IN) like nn.Linear; GPT-2 (IN, OUT) like Conv1D
  int up_width;              // columns of the up projection: 2F (gate|up) or F
};

BlockSpec block_spec(const ModelConfig& c);

// out (N, C) = the spec's norm of x (N, C); mean and rstd (N) scratch. b is LayerNorm's bias.
void cpu_block_norm(const BlockSpec& s, float* out, float* mean, float* rstd, const float* x,
                    const float* w, const float* b, int N, int C, float eps);
// act (N, F) = the spec's MLP activation of up (N, up_width).
void cpu_block_activation(const BlockSpec& s, float* act, const float* up, int N, int F);

}  // namespace kiln

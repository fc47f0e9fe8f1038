#include "kiln/model/block_spec.h"

#include "kiln/ops/activation.h"
#include "kiln/ops/layer_norm.h"
#include "kiln/ops/rms_norm.h"

namespace kiln {

BlockSpec block_spec(const ModelConfig& c) {
  if (c.arch == Arch::llama)
    return {NormKind::rms, PositionKind::rope, MlpKind::swiglu, ops::WeightLayout::out_in,
            2 * c.intermediate};
  return {NormKind::layer, PositionKind::learned, MlpKind::gelu, ops::WeightLayout::in_out,
          c.intermediate};
}

void cpu_block_norm(const BlockSpec& s, float* out, float* mean, float* rstd, const float* x,
                    const float* w, const float* b, int N, int C, float eps) {
  if (s.norm == NormKind::rms) {
    ops::cpu::rms_norm_forward(out, rstd, x, w, N, C, eps);
  } else {
    ops::cpu::layer_norm_forward(out, mean, rstd, x, w, b, N, C, eps);
  }
}

void cpu_block_activation(const BlockSpec& s, float* act, const float* up, int N, int F) {
  if (s.mlp == MlpKind::swiglu) {
    ops::cpu::swiglu_forward(act, up, N, F);
  } else {
    ops::cpu::gelu_forward(act, up, int64_t(N) * F);
  }
}

}  // namespace kiln

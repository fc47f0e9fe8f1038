// AdamW with decoupled weight decay, exactly as torch.optim.AdamW (bias-corrected moments,
// eps added after the square root). Memory-bound: 4 floats read and 3 written per parameter.
#pragma once

#include <cstdint>

namespace kiln::ops {

struct AdamWParams {
  float lr, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.0f;
  int64_t step = 1;  // 1-based step count, for bias correction
};

namespace ref {
// param, m, v (n) updated in place from grad (n).
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWParams& p);
}  // namespace ref

namespace cpu {
void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWParams& p);
}  // namespace cpu

}  // namespace kiln::ops

// Reference AdamW: torch.optim.AdamW's single-tensor path, line for line
// (torch/optim/adamw.py, _single_tensor_adamw, foreach=False, capturable=False).
#include "kiln/ops/adamw.h"

#include <cmath>

namespace kiln::ops::ref {

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWParams& p) {
  // Python computes these scalars in double; the tensor ops then use them as fp32.
  const double bc1 = 1.0 - std::pow(double(p.beta1), double(p.step));
  const double bc2 = 1.0 - std::pow(double(p.beta2), double(p.step));
  const float decay = float(1.0 - double(p.lr) * p.weight_decay);
  const float step_size = float(p.lr / bc1);
  const float bc2_sqrt = float(std::sqrt(bc2));
  const float one_minus_b1 = float(1.0 - p.beta1), one_minus_b2 = float(1.0 - p.beta2);
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    param[i] *= decay;                                 // param.mul_(1 - lr * wd)
    m[i] += one_minus_b1 * (g - m[i]);                 // exp_avg.lerp_(grad, 1 - beta1)
    v[i] = v[i] * p.beta2 + one_minus_b2 * g * g;      // exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2)
    float denom = std::sqrt(v[i]) / bc2_sqrt + p.eps;  // (v.sqrt() / bc2_sqrt).add_(eps)
    param[i] -= step_size * (m[i] / denom);            // param.addcdiv_(m, denom, -step_size)
  }
}

}  // namespace kiln::ops::ref

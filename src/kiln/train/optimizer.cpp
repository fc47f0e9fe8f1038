#include "kiln/train/optimizer.h"

#include <cmath>

#include "kiln/ops/adamw.h"
#include "kiln/ops/elementwise.h"

namespace kiln {

AdamW::AdamW(int64_t n, AdamWConfig cfg)
    : cfg_(cfg), m_(Tensor::zeros({n})), v_(Tensor::zeros({n})) {}

void AdamW::step(const std::vector<ParamInfo>& params, float* w, const float* grads, float lr) {
  ++step_;
  for (const ParamInfo& p : params) {
    const ops::AdamWParams hp = adamw_params(cfg_, lr, p.decay, step_);
    ops::cpu::adamw_step(w + p.offset, grads + p.offset, m_.f32() + p.offset, v_.f32() + p.offset,
                         p.numel(), hp);
  }
}

double grad_norm(const float* grads, int64_t n) {
  return std::sqrt(ops::cpu::sum_squares(grads, n));
}

bool clip_and_step(Model& model, AdamW& opt, float* grads, float lr, float clip, double* norm) {
  *norm = grad_norm(grads, model.num_params());
  return clip_and_step_at(model, opt, grads, lr, clip, *norm);
}

bool clip_and_step_at(Model& model, AdamW& opt, float* grads, float lr, float clip, double norm) {
  return clip_and_update(
      norm, clip, [&](float s) { ops::cpu::scale(grads, s, model.num_params()); },
      [&] { opt.step(model, grads, lr); });
}

}  // namespace kiln

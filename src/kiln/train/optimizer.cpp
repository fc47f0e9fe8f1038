#include "kiln/train/optimizer.h"

#include <cmath>

#include "kiln/ops/adamw.h"
#include "kiln/ops/elementwise.h"

namespace kiln {

AdamW::AdamW(const Model& model, AdamWConfig cfg)
    : cfg_(cfg), m_(Tensor::zeros({model.num_params()})), v_(Tensor::zeros({model.num_params()})) {}

void AdamW::step(Model& model, const float* grads, float lr) {
  ++step_;
  float* w = model.weights().f32();
  for (const ParamInfo& p : model.params()) {
    ops::AdamWParams hp;
    hp.lr = lr;
    hp.beta1 = cfg_.beta1;
    hp.beta2 = cfg_.beta2;
    hp.eps = cfg_.eps;
    hp.weight_decay = p.decay ? cfg_.weight_decay : 0.0f;
    hp.step = step_;
    ops::cpu::adamw_step(w + p.offset, grads + p.offset, m_.f32() + p.offset, v_.f32() + p.offset,
                         p.numel(), hp);
  }
}

double grad_norm(const float* grads, int64_t n) {
  return std::sqrt(ops::cpu::sum_squares(grads, n));
}

bool clip_and_step(Model& model, AdamW& opt, float* grads, float lr, float clip, double* norm,
                   const std::function<double(const float*)>& sum_squares) {
  const int64_t n = model.num_params();
  *norm = sum_squares ? std::sqrt(sum_squares(grads)) : grad_norm(grads, n);
  if (!std::isfinite(*norm)) return false;
  if (clip > 0 && *norm > clip) ops::cpu::scale(grads, float(clip / *norm), n);
  opt.step(model, grads, lr);
  return true;
}

}  // namespace kiln

// AdamW over the model's flat parameter buffer, with weight decay per parameter (none on norms,
// biases and embeddings: ParamInfo::decay). State: first and second moments, fp32, (P) each.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/adamw.h"

namespace kiln {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};

// The AdamW kernel's hyperparameters for one parameter (decay: whether it takes weight decay) at
// optimizer step `step` (1-based).
inline ops::AdamWParams adamw_params(const AdamWConfig& cfg, float lr, bool decay, int64_t step) {
  ops::AdamWParams hp;
  hp.lr = lr;
  hp.beta1 = cfg.beta1;
  hp.beta2 = cfg.beta2;
  hp.eps = cfg.eps;
  hp.weight_decay = decay ? cfg.weight_decay : 0.0f;
  hp.step = step;
  return hp;
}

class AdamW {
 public:
  AdamW(const Model& model, AdamWConfig cfg) : AdamW(model.num_params(), cfg) {}
  // Over any flat buffer of n parameters (a LoRA adapter's: model/lora.h).
  AdamW(int64_t n, AdamWConfig cfg);
  // Over given moments (P each, shared, not copied) after `steps` updates: how a data-parallel
  // run hands its state to save_checkpoint.
  AdamW(AdamWConfig cfg, Tensor m, Tensor v, int64_t steps)
      : cfg_(cfg), m_(std::move(m)), v_(std::move(v)), step_(steps) {}
  // One update of every parameter from `grads` (P) at learning rate lr.
  void step(Model& model, const float* grads, float lr) {
    step(model.params(), model.weights().f32(), grads, lr);
  }
  // The same over `weights` laid out by `params`.
  void step(const std::vector<ParamInfo>& params, float* weights, const float* grads, float lr);
  int64_t steps() const { return step_; }

  Tensor& m() { return m_; }
  Tensor& v() { return v_; }
  void set_steps(int64_t s) { step_ = s; }

 private:
  AdamWConfig cfg_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

// The update rule of every layout and device, written once: a non-finite global gradient norm
// skips the update (returns false: nothing non-finite reaches the weights); otherwise the
// gradients are clipped to norm `clip` (0 = off) by scale_grads(clip / norm), then adamw() runs.
// The CPU optimizers scale their gradient buffers; the GPU folds the factor into its fused AdamW.
template <class ScaleGrads, class Step>
[[nodiscard]] bool clip_and_update(double norm, float clip, ScaleGrads&& scale_grads,
                                   Step&& adamw) {
  if (!std::isfinite(norm)) return false;
  if (clip > 0 && norm > clip) scale_grads(float(clip / norm));
  adamw();
  return true;
}

// L2 norm of all gradients (double accumulation, deterministic for a thread count).
double grad_norm(const float* grads, int64_t n);

// One optimizer update of a whole model (clip_and_update with AdamW). `norm` receives the
// pre-clipping norm.
[[nodiscard]] bool clip_and_step(Model& model, AdamW& opt, float* grads, float lr, float clip,
                                 double* norm);
// The same with the norm given: a pipeline stage holds part of the gradient, and clips by the
// norm over all stages (Pipeline::grad_norm).
[[nodiscard]] bool clip_and_step_at(Model& model, AdamW& opt, float* grads, float lr, float clip,
                                    double norm);

}  // namespace kiln

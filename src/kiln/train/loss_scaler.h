// Dynamic loss scaling for fp16, as Megatron's DynamicGradScaler: the loss (and so every
// gradient) is multiplied by `scale`; an overflow (a gradient beyond fp16's range or not finite)
// skips the update; after `hysteresis` overflows the scale is halved (never below min_scale);
// after `growth_interval` clean steps it doubles. Scales are powers of two, so scaling and
// unscaling are exact: the update is the same whatever the scale, as long as nothing overflows.
#pragma once

#include <cstdint>

namespace kiln {

struct LossScaleConfig {
  bool dynamic = true;
  double initial = 4294967296.0;  // 2^32
  double min_scale = 1.0;
  int growth_interval = 1000;
  int hysteresis = 2;
};

class LossScaler {
 public:
  explicit LossScaler(const LossScaleConfig& c)
      : c_(c), scale_(c.initial), hysteresis_left_(c.hysteresis) {}
  double scale() const { return scale_; }
  // Records one attempt's outcome and adjusts the scale.
  void update(bool overflow) {
    if (!c_.dynamic) return;
    if (overflow) {
      growth_ = 0;
      if (--hysteresis_left_ <= 0) {
        scale_ = scale_ / 2 < c_.min_scale ? c_.min_scale : scale_ / 2;
        hysteresis_left_ = c_.hysteresis;  // a fresh budget at the new scale
      }
    } else if (++growth_ == c_.growth_interval) {
      growth_ = 0;
      hysteresis_left_ = c_.hysteresis;
      scale_ *= 2;
    }
  }
  // State, for checkpoints.
  int growth() const { return growth_; }
  int hysteresis_left() const { return hysteresis_left_; }
  void restore(double scale, int growth, int hysteresis_left) {
    scale_ = scale;
    growth_ = growth;
    hysteresis_left_ = hysteresis_left;
  }

 private:
  LossScaleConfig c_;
  double scale_;
  int hysteresis_left_, growth_ = 0;
};

// Whether any gradient is non-finite or beyond fp16's largest value (65504): an fp16 overflow.
bool fp16_overflow(const float* grads, int64_t n);

}  // namespace kiln

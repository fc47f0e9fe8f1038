// Learning-rate schedule: linear warmup from 0 to lr over warmup_steps, then cosine or linear
// decay to min_lr at the last step (or constant).
#pragma once

#include <cmath>

#include "kiln/train/train_config.h"

namespace kiln {

inline float lr_at(int step, int total, float lr, float min_lr, int warmup, LrSchedule schedule) {
  // step is 1-based: the first update uses lr * 1/warmup, never 0.
  if (warmup > 0 && step <= warmup) return lr * float(step) / float(warmup);
  if (schedule == LrSchedule::constant || total <= warmup) return lr;
  float progress = float(step - warmup) / float(total - warmup);
  progress = progress < 0 ? 0 : progress > 1 ? 1 : progress;
  float coeff = schedule == LrSchedule::linear
                    ? 1.0f - progress
                    : 0.5f * (1.0f + std::cos(3.14159265358979f * progress));
  return min_lr + coeff * (lr - min_lr);
}

}  // namespace kiln

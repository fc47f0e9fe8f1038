#include "kiln/train/loss_scaler.h"

#include <cmath>

#include "kiln/core/parallel.h"

namespace kiln {

bool fp16_overflow(const float* grads, int64_t n) {
  constexpr int kMaxThreads = 256;
  bool bad[kMaxThreads] = {};
  int64_t parts = std::min<int64_t>(num_threads(), kMaxThreads);
  parallel_for(parts, [&](int64_t p) {
    bool b = false;
    for (int64_t i = n * p / parts, e = n * (p + 1) / parts; i < e; ++i)
      b |= !(std::fabs(grads[i]) <= 65504.0f);  // NaN compares false
    bad[p] = b;
  });
  for (int64_t p = 0; p < parts; ++p)
    if (bad[p]) return true;
  return false;
}

}  // namespace kiln

// RoPE frequency and cos/sin tables, following Hugging Face's modeling_rope_utils.py
// (_compute_default / _linear_scaling / _dynamic_ntk / _llama3_parameters). Computed in double
// and rounded once to fp32, so the tables are within one fp32 rounding of HF's float32 ones.
#include "kiln/ops/rope.h"

#include <cmath>
#include <cstdint>

#include "kiln/core/error.h"

namespace kiln::ops {

void rope_inv_freq(float* inv_freq, int D, float theta, const RopeScaling& scaling, int seq_len) {
  KILN_CHECK(D > 0 && D % 2 == 0, "rope", "head dim D must be positive and even, got ", D);
  KILN_CHECK(theta > 0, "rope", "rope_theta must be positive, got ", theta);
  using Kind = RopeScaling::Kind;
  if (scaling.kind != Kind::none)
    KILN_CHECK(scaling.factor > 0, "rope", "rope_scaling.factor must be positive, got ",
               scaling.factor);
  double base = theta;
  if (scaling.kind == Kind::dynamic_ntk && seq_len > scaling.original_max_position) {
    // NTK-aware: stretch the base so the lowest frequency covers seq_len (HF recomputes this
    // whenever the sequence grows past the original context).
    const double f = scaling.factor, L = seq_len, L0 = scaling.original_max_position;
    base *= std::pow(f * L / L0 - (f - 1.0), double(D) / (D - 2));
  }
  const double kPi = 3.14159265358979323846;
  for (int i = 0; i < D / 2; ++i) {
    // HF rounds the exponent 2i/D to fp32 before the pow; do the same.
    double f = 1.0 / std::pow(base, double(float(2 * i) / float(D)));
    switch (scaling.kind) {
      case Kind::none:
      case Kind::dynamic_ntk:
        break;
      case Kind::linear:
        f /= scaling.factor;
        break;
      case Kind::llama3: {
        // Long wavelengths (low frequencies) are divided by factor, short ones kept, and the
        // band between interpolated smoothly.
        const double old_ctx = scaling.original_max_position;
        const double lo = scaling.low_freq_factor, hi = scaling.high_freq_factor;
        const double wavelen = 2 * kPi / f;
        if (wavelen > old_ctx / lo) {
          f /= scaling.factor;
        } else if (wavelen >= old_ctx / hi) {
          KILN_CHECK(hi != lo, "rope",
                     "llama3 rope_scaling needs high_freq_factor != ", "low_freq_factor, both are ",
                     lo);
          const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
          f = (1 - smooth) * f / scaling.factor + smooth * f;
        }
        break;
      }
    }
    inv_freq[i] = float(f);
  }
}

void rope_table(float* cos, float* sin, const float* inv_freq, int T, int D) {
  const int half = D / 2;
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      // HF forms the angle as an fp32 product (position_ids.float() @ inv_freq); keeping that
      // rounding matters at large t, where one ulp of the angle is visible in cos/sin.
      const float angle = float(t) * inv_freq[i];
      cos[int64_t(t) * half + i] = float(std::cos(double(angle)));
      sin[int64_t(t) * half + i] = float(std::sin(double(angle)));
    }
}

}  // namespace kiln::ops

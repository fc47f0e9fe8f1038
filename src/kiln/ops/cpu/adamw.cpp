// AdamW, the per-element arithmetic of ref/adamw.cpp (torch's single-tensor path) in one fused
// pass: 4 floats read and 3 written per parameter, so it runs at memory bandwidth. GCC will not
// vectorize sqrt while it must set errno (no -ffast-math), hence the AVX-512 loop; its scalar
// tail uses the same fused multiply-adds, so every element gets the same bits wherever the
// thread ranges fall.
#include "kiln/ops/adamw.h"

#include <cmath>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {

struct Scalars {
  float decay, step_size, bc2_sqrt, b2, eps, one_minus_b1, one_minus_b2;
};

// One parameter: the order of torch's tensor ops, with the multiply-adds fused explicitly.
inline void update(float& param, float g, float& m, float& v, const Scalars& s) {
  m = std::fma(s.one_minus_b1, g - m, m);         // exp_avg.lerp_(grad, 1 - beta1)
  v = std::fma(s.one_minus_b2, g * g, v * s.b2);  // exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2)
  const float denom = std::sqrt(v) / s.bc2_sqrt + s.eps;       // (v.sqrt() / bc2_sqrt).add_(eps)
  param = std::fma(-s.step_size, m / denom, param * s.decay);  // mul_(1-lr*wd); addcdiv_
}

void update_range(float* param, const float* grad, float* m, float* v, int64_t lo, int64_t hi,
                  const Scalars& s) {
  int64_t i = lo;
#if defined(__AVX512F__)
  const __m512 omb1 = _mm512_set1_ps(s.one_minus_b1), omb2 = _mm512_set1_ps(s.one_minus_b2);
  const __m512 b2 = _mm512_set1_ps(s.b2), bc2 = _mm512_set1_ps(s.bc2_sqrt);
  const __m512 eps = _mm512_set1_ps(s.eps), decay = _mm512_set1_ps(s.decay);
  const __m512 neg_step = _mm512_set1_ps(-s.step_size);
  for (; i + 16 <= hi; i += 16) {
    const __m512 g = _mm512_loadu_ps(grad + i);
    __m512 mi = _mm512_loadu_ps(m + i), vi = _mm512_loadu_ps(v + i);
    mi = _mm512_fmadd_ps(omb1, _mm512_sub_ps(g, mi), mi);
    vi = _mm512_fmadd_ps(omb2, _mm512_mul_ps(g, g), _mm512_mul_ps(vi, b2));
    // maskz with all lanes set == _mm512_sqrt_ps, minus GCC 12's false -Wuninitialized on it.
    const __m512 root = _mm512_maskz_sqrt_ps(__mmask16(0xFFFF), vi);
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(root, bc2), eps);
    const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(param + i), decay);
    _mm512_storeu_ps(param + i, _mm512_fmadd_ps(neg_step, _mm512_div_ps(mi, denom), p));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
  }
#endif
  for (; i < hi; ++i) update(param[i], grad[i], m[i], v[i], s);
}

}  // namespace

void adamw_step(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWParams& p) {
  // Scalars in double as Python computes them, then used as fp32 like torch's tensor ops.
  const double bc1 = 1.0 - std::pow(double(p.beta1), double(p.step));
  const double bc2 = 1.0 - std::pow(double(p.beta2), double(p.step));
  const Scalars s{float(1.0 - double(p.lr) * p.weight_decay),
                  float(p.lr / bc1),
                  float(std::sqrt(bc2)),
                  p.beta2,
                  p.eps,
                  float(1.0 - p.beta1),
                  float(1.0 - p.beta2)};
  parallel_ranges(n, 1 << 14,
                  [&](int64_t lo, int64_t hi) { update_range(param, grad, m, v, lo, hi, s); });
}

}  // namespace kiln::ops::cpu

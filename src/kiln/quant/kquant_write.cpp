// Block encoders: every format kiln writes, computed as ggml's reference quantizers compute them
// (ggml-quants.c quantize_row_*_ref, the path llama-quantize takes without an importance matrix),
// operation for operation in fp32, so the bytes are identical (tests/quant/test_kquant_write.cpp
// holds bytes made by ggml itself). This file is compiled with -ffp-contract=off (CMakeLists.txt):
// a fused multiply-add rounds once where ggml (built for baseline x86-64) rounds twice, and one
// flipped rounding changes a byte (with it, q2_k and q5_k differ on 4 of the test's inputs). A
// llama.cpp built where its compiler fuses (aarch64) can itself write other bytes. Block layouts
// are in qtensor.h.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/quant/block_fields.h"
#include "kiln/quant/qtensor.h"

namespace kiln::quant {

namespace {

constexpr int kSuper = 256;             // QK_K: values per K-quant super-block
constexpr float kGroupMaxEps = 1e-15f;  // ggml's GROUP_MAX_EPS: below this a group is zero

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// ggml's nearest_int: adding 1.5 * 2^23 leaves round(v) (ties to even) in the low mantissa bits.
// Exact for |v| < 2^22; beyond that it returns what ggml returns.
int nearest_int(float v) {
  const float biased = v + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &biased, 4);
  return (i & 0x007fffff) - 0x00400000;
}

int clamp(int v, int lo, int hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

// The value of largest magnitude, with its sign (0 for an empty or all-zero group).
float signed_absmax(const float* x, int n, float* amax_out) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  *amax_out = amax;
  return max;
}

// ggml's make_qx_quants, rmse_type 1 (weights x^2), no importance weights: symmetric levels
// l in [-nmax, nmax) for n values. Starts from scale max / -nmax, tries 18 nearby ones and keeps
// the best weighted least-squares fit. L gets l + nmax; returns the scale. (q6_k)
float fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  const float max = signed_absmax(x, n, &amax);
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  // Sums of w x l and w l^2 for the levels iscale gives (ggml's operand order: (w * x) * l).
  auto sums = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = *suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      *sumlx += w * x[i] * float(l);
      *suml2 += w * float(l) * float(l);
    }
  };
  auto set_levels = [&](float iscale) {
    for (int i = 0; i < n; ++i)
      L[i] = int8_t(nmax + clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = float(-nmax) / max, sumlx, suml2;
  sums(iscale, &sumlx, &suml2);
  set_levels(iscale);
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(is)) / max;
    sums(iscale, &sumlx, &suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      set_levels(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// ggml's make_q3_quants with do_rmse: symmetric levels in [-nmax, nmax), then up to 5 passes
// that move one level at a time when that improves the x^2-weighted fit. L gets l + nmax;
// returns the scale. (q3_k)
float fit_symmetric_refined(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  const float max = signed_absmax(x, n, &amax);
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float iscale = float(-nmax) / max;
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * float(l);
    suml2 += w * float(l) * float(l);
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * float(L[i]);
      if (!(slx > 0)) continue;
      float sl2 = suml2 - w * float(L[i]) * float(L[i]);
      const int l = clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (l == L[i]) continue;
      slx += w * x[i] * float(l);
      sl2 += w * float(l) * float(l);
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = int8_t(l);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ggml's make_qkx2_quants: affine levels l in [0, nmax] with x ~ scale * l - the_min, min <= 0.
// Starts from the range, then tries nstep + 1 scales (rmin + rdelta * is + nmax) / range, each
// refit by weighted least squares for scale and min, and keeps the lowest weighted error
// (|diff| when use_mad, else diff^2). Returns the scale; *the_min = -min >= 0. (q2_k, q4_k, q5_k)
float fit_affine(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                 float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  auto error_of = [&](float scale, float mn, const uint8_t* levels) {
    float err = 0.0f;
    for (int i = 0; i < n; ++i) {
      float diff = scale * float(levels[i]) + mn - x[i];
      diff = use_mad ? std::fabs(diff) : diff * diff;
      err += weights[i] * diff;
    }
    return err;
  };
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  for (int i = 0; i < n; ++i) L[i] = uint8_t(clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
  float best_error = error_of(scale, min, L);
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  uint8_t Laux[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * float(l);
      sum_l2 += w * float(l) * float(l);
      sum_xl += w * float(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (!(D > 0)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    if (this_min > 0) {
      this_min = 0;
      this_scale = sum_xl / sum_l2;
    }
    const float cur_error = error_of(this_scale, this_min, Laux);
    if (cur_error < best_error) {
      std::memcpy(L, Laux, size_t(n));
      best_error = cur_error;
      scale = this_scale;
      min = this_min;
    }
  }
  *the_min = -min;
  return scale;
}

// --- the 32-value formats ---------------------------------------------------------------------

// Note ggml multiplies by id = 1/d (d in fp32, before rounding to fp16) rather than dividing by
// d: the two differ in the last bit, and so can the rounded value.
void encode_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  for (int j = 0; j < kBlock; ++j) out[2 + j] = uint8_t(int8_t(std::roundf(x[j] * id)));
}

// q4_0 (bits 4, offset 8) and q5_0 (bits 5, offset 16): d = signed max / -offset.
void encode_q45_0(const float* x, uint8_t* out, bool five) {
  float amax;
  const float max = signed_absmax(x, kBlock, &amax);
  const float off = five ? 16.0f : 8.0f;
  const int top = five ? 31 : 15;
  const float d = max / -off;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  uint8_t* qs = out + (five ? 6 : 2);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock / 2; ++j) {
    const float x0 = x[j] * id, x1 = x[j + kBlock / 2] * id;
    const int q0 = std::min(top, int(int8_t(x0 + (off + 0.5f))));
    const int q1 = std::min(top, int(int8_t(x1 + (off + 0.5f))));
    qs[j] = uint8_t((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= uint32_t((q0 & 0x10) >> 4) << j;
    qh |= uint32_t((q1 & 0x10) >> 4) << (j + kBlock / 2);
  }
  if (five) std::memcpy(out + 2, &qh, 4);
}

// q4_1 and q5_1: d = (max - min) / (2^bits - 1), m = min.
void encode_q45_1(const float* x, uint8_t* out, bool five) {
  float min = x[0], max = x[0];
  for (int j = 1; j < kBlock; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
  const float d = (max - min) / (five ? 31.0f : 15.0f);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_f16(out, d);
  put_f16(out + 2, min);
  uint8_t* qs = out + (five ? 8 : 4);
  uint32_t qh = 0;
  for (int j = 0; j < kBlock / 2; ++j) {
    const float x0 = (x[j] - min) * id, x1 = (x[j + kBlock / 2] - min) * id;
    // q4_1 clamps the float-to-int8 conversion at 15; q5_1 converts to uint8 unclamped.
    const int q0 = five ? int(uint8_t(x0 + 0.5f)) : std::min(15, int(int8_t(x0 + 0.5f)));
    const int q1 = five ? int(uint8_t(x1 + 0.5f)) : std::min(15, int(int8_t(x1 + 0.5f)));
    qs[j] = uint8_t((q0 & 0x0F) | ((q1 & 0x0F) << 4));
    qh |= uint32_t((q0 & 0x10) >> 4) << j;
    qh |= uint32_t((q1 & 0x10) >> 4) << (j + kBlock / 2);
  }
  if (five) std::memcpy(out + 4, &qh, 4);
}

// --- the K-quants ------------------------------------------------------------------------------

// Packs 256 2-bit values: byte 32 * (j / 128) + l holds values j + l, + 32, + 64, + 96 at bit
// offsets 0, 2, 4, 6 (q2_k and q3_k's low bits).
void pack_2bit(const uint8_t* L, uint8_t* qs) {
  for (int j = 0; j < kSuper; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] =
          uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// q2_k { u8 scales[16]; u8 qs[64]; f16 d, dmin; }: 16 groups of 16, each fit affinely with 2-bit
// levels, weighted by |x|; group scale and min as 4-bit multiples of d and dmin.
void encode_q2_k(const float* x, uint8_t* out) {
  uint8_t* scales_q = out;
  uint8_t L[kSuper];
  float weights[16], mins[16], scales[16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = fit_affine(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  if (max_scale > 0) {
    const float iscale = 15.0f / max_scale;
    for (int j = 0; j < 16; ++j) scales_q[j] = uint8_t(nearest_int(iscale * scales[j]));
    put_f16(out + 80, max_scale / 15.0f);
  } else {
    for (int j = 0; j < 16; ++j) scales_q[j] = 0;
    put_f16(out + 80, 0.0f);
  }
  if (max_min > 0) {
    const float iscale = 15.0f / max_min;
    for (int j = 0; j < 16; ++j) scales_q[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
    put_f16(out + 82, max_min / 15.0f);
  } else {
    put_f16(out + 82, 0.0f);
  }
  // Requantize against the stored (rounded) scales and mins.
  const float dd = f16_at(out + 80), dm = f16_at(out + 82);
  for (int j = 0; j < 16; ++j) {
    const float d = dd * float(scales_q[j] & 0xF);
    if (d == 0) continue;
    const float m = dm * float(scales_q[j] >> 4);
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = uint8_t(clamp(nearest_int((x[16 * j + i] + m) / d), 0, 3));
  }
  pack_2bit(L, out + 16);
}

// q3_k { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }: 16 groups of 16, symmetric 3-bit
// levels; group scales as signed 6-bit multiples of d (4 low bits in bytes 0..7, 2 high bits in
// bytes 8..11); the levels' high bit in hmask (bit b of byte m: value 32 b + m).
void encode_q3_k(const float* x, uint8_t* out) {
  uint8_t* sc = out + 96;
  int8_t L[kSuper];
  float scales[16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = fit_symmetric_refined(16, 4, x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > amax) {
      amax = a;
      max_scale = scales[j];
    }
  }
  std::memset(sc, 0, 12);
  if (max_scale != 0) {
    const float iscale = -32.0f / max_scale;
    for (int j = 0; j < 16; ++j) {
      // ggml stores nearest_int's result in an int8 before clamping.
      const int l = clamp(int8_t(nearest_int(iscale * scales[j])), -32, 31) + 32;
      if (j < 8) {
        sc[j] = uint8_t(l & 0xF);
      } else {
        sc[j - 8] |= uint8_t((l & 0xF) << 4);
      }
      sc[j % 4 + 8] |= uint8_t((l >> 4) << (2 * (j / 4)));
    }
    put_f16(out + 108, 1 / iscale);
  } else {
    put_f16(out + 108, 0.0f);
  }
  const float dd = f16_at(out + 108);
  int8_t stored[16];
  q3_k_scales(sc, stored);
  for (int j = 0; j < 16; ++j) {
    const float d = dd * float(stored[j] - 32);
    if (d == 0) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = int8_t(clamp(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
  }
  uint8_t* hmask = out;
  std::memset(hmask, 0, 32);
  uint8_t low[kSuper];
  for (int j = 0; j < kSuper; ++j) {
    low[j] = uint8_t(L[j]);
    if (L[j] > 3) {
      hmask[j % 32] |= uint8_t(1 << (j / 32));
      low[j] = uint8_t(L[j] - 4);
    }
  }
  pack_2bit(low, out + 32);
}

// q4_k and q5_k { f16 d, dmin; u8 scales[12]; (u8 qh[32];) u8 qs[128]; }: 8 groups of 32, each
// fit affinely with 4- or 5-bit levels, weighted by rms(x) + |x|; scales and mins as 6-bit
// multiples of d and dmin (scale_min_k4's packing).
void encode_q45_k(const float* x, uint8_t* out, bool five) {
  const int nmax = five ? 31 : 15;
  uint8_t* sc = out + 4;
  uint8_t L[kSuper];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* g = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += g[l] * g[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(g[l]);
    scales[j] = five ? fit_affine(32, 31, g, weights, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, false)
                     : fit_affine(32, 15, g, weights, L + 32 * j, &mins[j], -1.0f, 0.1f, 20, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    // ggml stores nearest_int's result in a uint8 before taking min(63, .).
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      sc[j] = ls;
      sc[j + 4] = lm;
    } else {
      sc[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      sc[j - 4] |= uint8_t((ls >> 4) << 6);
      sc[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  put_f16(out, max_scale / 63.0f);
  put_f16(out + 2, max_min / 63.0f);
  const float dd = f16_at(out), dm = f16_at(out + 2);
  for (int j = 0; j < 8; ++j) {
    uint8_t s, m;
    scale_min_k4(j, sc, &s, &m);
    const float d = dd * float(s);
    if (d == 0) continue;
    const float mn = dm * float(m);
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] = uint8_t(clamp(nearest_int((x[32 * j + i] + mn) / d), 0, nmax));
  }
  // Byte l of 32-byte chunk c: value 64 c + l in the low nibble, 64 c + 32 + l in the high one;
  // q5_k's fifth bits in qh, bit 2c for the first, 2c + 1 for the second.
  uint8_t* qh = five ? out + 16 : nullptr;
  uint8_t* qs = out + (five ? 48 : 16);
  if (qh) std::memset(qh, 0, 32);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
      if (qh && l1 > 15) {
        l1 -= 16;
        qh[l] |= uint8_t(1 << (2 * c));
      }
      if (qh && l2 > 15) {
        l2 -= 16;
        qh[l] |= uint8_t(2 << (2 * c));
      }
      qs[32 * c + l] = uint8_t(l1 | (l2 << 4));
    }
}

// q6_k { u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d; }: 16 groups of 16, symmetric 6-bit
// levels; group scales as int8 multiples of d.
void encode_q6_k(const float* x, uint8_t* out) {
  int8_t L[kSuper];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
    const float a = std::fabs(scales[ib]);
    if (a > max_abs_scale) {
      max_abs_scale = a;
      max_scale = scales[ib];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(out, 0, block_bytes(QType::q6_k));
    return;
  }
  int8_t* sc = reinterpret_cast<int8_t*>(out + 192);
  const float iscale = -128.0f / max_scale;
  put_f16(out + 208, 1 / iscale);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
  const float dd = f16_at(out + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = dd * float(sc[j]);
    if (d == 0) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = int8_t(clamp(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
  }
  // Per 128 values: ql byte l holds values l | l + 64 (nibbles), byte l + 32 values l + 32 |
  // l + 96; qh byte l their top two bits at offsets 0, 2, 4, 6 for l, l + 32, l + 64, l + 96.
  uint8_t* ql = out;
  uint8_t* qh = out + 128;
  for (int j = 0; j < kSuper; j += 128, ql += 64, qh += 32)
    for (int l = 0; l < 32; ++l) {
      const uint8_t a = uint8_t(L[j + l]), b = uint8_t(L[j + l + 32]);
      const uint8_t c = uint8_t(L[j + l + 64]), e = uint8_t(L[j + l + 96]);
      ql[l] = uint8_t((a & 0xF) | ((c & 0xF) << 4));
      ql[l + 32] = uint8_t((b & 0xF) | ((e & 0xF) << 4));
      qh[l] = uint8_t((a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6));
    }
}

// q8_k { f32 d; int8 qs[256]; int16 bsums[16]; }: d = signed max / -127 in fp32; bsums are the
// sums of 16 consecutive qs (ggml's activation format for K-quant dot products).
void encode_q8_k(const float* x, uint8_t* out) {
  std::memset(out, 0, block_bytes(QType::q8_k));
  float amax;
  const float max = signed_absmax(x, kSuper, &amax);
  if (amax == 0) return;
  const float iscale = -127.0f / max;
  int8_t* qs = reinterpret_cast<int8_t*>(out + 4);
  for (int j = 0; j < kSuper; ++j) qs[j] = int8_t(std::min(127, nearest_int(iscale * x[j])));
  for (int j = 0; j < 16; ++j) {
    int16_t sum = 0;
    for (int i = 0; i < 16; ++i) sum = int16_t(sum + qs[16 * j + i]);
    std::memcpy(out + 260 + 2 * j, &sum, 2);
  }
  const float d = 1 / iscale;
  std::memcpy(out, &d, 4);
}

}  // namespace

bool can_quantize(QType t) {
  return int(t) >= int(QType::q8_0) && int(t) <= int(QType::q8_k);
}

void quantize_block(const float* x, uint8_t* out, QType type) {
  switch (type) {
    case QType::q8_0:
      return encode_q8_0(x, out);
    case QType::q4_0:
    case QType::q5_0:
      return encode_q45_0(x, out, type == QType::q5_0);
    case QType::q4_1:
    case QType::q5_1:
      return encode_q45_1(x, out, type == QType::q5_1);
    case QType::q2_k:
      return encode_q2_k(x, out);
    case QType::q3_k:
      return encode_q3_k(x, out);
    case QType::q4_k:
    case QType::q5_k:
      return encode_q45_k(x, out, type == QType::q5_k);
    case QType::q6_k:
      return encode_q6_k(x, out);
    case QType::q8_k:
      return encode_q8_k(x, out);
  }
  fail("quant", "internal: no encoder for QType ", int(type));
}

}  // namespace kiln::quant

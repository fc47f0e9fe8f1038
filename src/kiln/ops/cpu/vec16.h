// 16-lane fp32 vectors (one zmm register with AVX-512) for the CPU kernels, as GCC/Clang vector
// extensions rather than intrinsics so the code reads as arithmetic and still compiles (as
// narrower ops) elsewhere. Also the vectorized 2^x that attention and the softmax share: glibc's
// expf does not vectorize without -ffast-math.
#pragma once

#include <cstdint>

namespace kiln::ops::cpu::vec {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef int8_t vb16 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
// Unaligned access through a float-typed vector: unlike memcpy, the compiler knows these cannot
// alias row pointers held elsewhere, so it keeps those in registers.
typedef float v16u __attribute__((vector_size(64), aligned(4)));

constexpr int kL = 16;  // lanes
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

inline v16 load(const float* p) {
  return *reinterpret_cast<const v16u*>(p);
}
inline void store(float* p, v16 v) {
  *reinterpret_cast<v16u*>(p) = v;
}
inline v16 splat(float x) {
  return v16{} + x;
}
inline v16 vmax(v16 a, v16 b) {
  return a > b ? a : b;
}

// Horizontal reduction by halving (the _mm512_reduce_* intrinsics trip GCC 12 warnings).
template <typename Op>
inline float reduce(v16 v, Op op) {
  const v8 a = op(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  const v4 b =
      op(__builtin_shufflevector(a, a, 0, 1, 2, 3), __builtin_shufflevector(a, a, 4, 5, 6, 7));
  return op(op(b[0], b[1]), op(b[2], b[3]));
}
inline float hmax(v16 v) {
  return reduce(v, [](auto x, auto y) { return x > y ? x : y; });
}
inline float hsum(v16 v) {
  return reduce(v, [](auto x, auto y) { return x + y; });
}
inline int32_t hsum_int(vi16 v) {
  int32_t s = 0;
  for (int i = 0; i < kL; ++i) s += v[i];
  return s;
}

// 2^x to ~2 ulp: x = n + f with n = round(x), |f| <= 1/2; 2^f by its Taylor series in f*ln2 to
// degree 7 (truncation < 1e-8), 2^n by building the exponent bits. Below -126 returns exactly 0,
// so masked (-inf) scores contribute nothing.
inline v16 exp2v(v16 x) {
  const v16 lo = splat(-126.0f), hi = splat(127.0f);
  v16 xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const v16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16 n = (xc + magic) - magic;
  const v16 f = xc - n;
  v16 p = splat(1.5252733804059840e-5f);
  p = p * f + 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284770e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
  const v16 r = p * (v16)bits;
  return x < lo ? v16{} : r;
}

// e^x = 2^(x log2 e).
inline v16 expv(v16 x) {
  return exp2v(x * kLog2e);
}

}  // namespace kiln::ops::cpu::vec

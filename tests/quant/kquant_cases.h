/* The inputs of the quantizer oracle test: deterministic float blocks, written in C so that
 * test_kquant_write.cpp and ggml_quant_oracle.c (which runs ggml's own quantizer on them) share
 * one definition. Every value is one int -> float conversion and one multiply (no sums: nothing a
 * fused multiply-add could change). */
#ifndef KILN_TESTS_QUANT_KQUANT_CASES_H
#define KILN_TESTS_QUANT_KQUANT_CASES_H

#include <stdint.h>
#include <stdlib.h>

enum {
  KQ_RANDOM,   /* 1024 values, bell-shaped, a different scale (6e-4 .. 130) per 32 */
  KQ_ZERO,     /* all zero */
  KQ_CONSTANT, /* all 0.37 */
  KQ_OUTLIER,  /* small values (|x| < 0.07) and one 1000 */
  KQ_NEGATIVE, /* every value in [-0.93, -0.3] */
  KQ_TINY,     /* |x| < 7e-9: fp16 scales underflow to 0 */
  KQ_SUBEPS,   /* |x| < 7e-16: below ggml's GROUP_MAX_EPS */
  KQ_SPARSE,   /* one nonzero in 37, so many 16- and 32-value groups are all zero */
  KQ_LARGE,    /* |x| up to 63000, near fp16's largest */
  KQ_CASES
};

static const char* const kq_case_names[KQ_CASES] = {
    "random", "zero", "constant", "outlier", "negative", "tiny", "subeps", "sparse", "large"};

static inline int kq_case_len(int c) {
  return c == KQ_RANDOM ? 1024 : 256;
}

static inline uint32_t kq_hash(uint32_t x) { /* lowbias32 */
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

/* The sum of three 22-bit uniforms, centred: an integer in (-6291456, 6291456), exact in fp32. */
static inline int32_t kq_bell(uint32_t i) {
  const uint32_t a = kq_hash(3 * i) >> 10, b = kq_hash(3 * i + 1) >> 10,
                 c = kq_hash(3 * i + 2) >> 10;
  return (int32_t)(a + b + c) - 6291456;
}

static inline void kq_case_fill(int c, float* x) {
  static const float random_scales[7] = {1e-10f, 3e-9f, 1e-8f, 5e-8f, 2e-7f, 1e-6f, 2e-5f};
  const int n = kq_case_len(c);
  for (int i = 0; i < n; ++i) {
    const int32_t b = kq_bell((uint32_t)(i + 1000 * c));
    switch (c) {
      case KQ_RANDOM:
        x[i] = (float)b * random_scales[(i / 32) % 7];
        break;
      case KQ_ZERO:
        x[i] = 0.0f;
        break;
      case KQ_CONSTANT:
        x[i] = 0.37f;
        break;
      case KQ_OUTLIER:
        x[i] = i == 77 ? 1000.0f : (float)b * 1e-8f;
        break;
      case KQ_NEGATIVE:
        x[i] = (float)(-abs(b) - 3000000) * 1e-7f;
        break;
      case KQ_TINY:
        x[i] = (float)b * 1e-15f;
        break;
      case KQ_SUBEPS:
        x[i] = (float)b * 1e-22f;
        break;
      case KQ_SPARSE:
        x[i] = i % 37 == 0 ? (float)b * 1e-7f : 0.0f;
        break;
      default:
        x[i] = (float)b * 1e-2f;
        break; /* KQ_LARGE */
    }
  }
}

/* FNV-1a, 64 bits: the test compares hashes of the encoded bytes. */
static inline uint64_t kq_fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

#endif

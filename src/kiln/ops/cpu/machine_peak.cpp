// Register-only loops: kAcc independent accumulators per thread hide the instruction latency
// (4-5 cycles, 2 per cycle), so the loop runs at the issue rate of the one instruction measured.
// GCC 12's reduce and extract intrinsics pass _mm512_undefined_*() as their unused merge source,
// which -Wuninitialized reports: a false positive about the header.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kiln/ops/machine_peak.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "kiln/core/parallel.h"
#include "kiln/ops/matmul_bf16.h"

namespace kiln::ops::cpu {

namespace {

constexpr int kAcc = 12;
// (vpmaddubsw's product does not depend on the accumulator, so the AVX2 loop hides its operands
// from the optimizer: 12 products are computed every trip.)

template <typename F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs body(iters) on every thread at once; returns wall seconds. Each body returns a value
// that is kept, so the loop cannot be optimized away.
template <typename F>
double on_all_threads(F&& body) {
  const int t = num_threads();
  std::vector<int64_t> sink(size_t(t) * 8);
  const double s =
      seconds([&] { parallel_for(t, [&](int64_t i) { sink[size_t(i) * 8] = body(); }); });
  volatile int64_t keep = 0;
  for (int64_t v : sink) keep = keep + v;
  return s;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vnni"))) int64_t dpbusd_zmm(int64_t iters) {
  __m512i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm512_add_epi32(acc[0], acc[i]);
  return _mm512_reduce_add_epi32(acc[0]);
}

__attribute__((target("avx2,avxvnni"))) int64_t dpbusd_ymm(int64_t iters) {
  __m256i acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], a, b);
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm256_add_epi32(acc[0], acc[i]);
  return _mm256_extract_epi32(acc[0], 0);
}

__attribute__((target("avx2"))) int64_t maddubs_ymm(int64_t iters) {
  __m256i acc[kAcc], av[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_epi32(i), av[i] = _mm256_set1_epi8(char(i));
  const __m256i b = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) {
      __asm__ volatile("" : "+x"(av[i]));  // opaque operand: no hoisting or sharing the product
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(av[i], b), ones));
    }
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm256_add_epi32(acc[0], acc[i]);
  return _mm256_extract_epi32(acc[0], 0);
}

__attribute__((target("avx512f"))) int64_t fma_zmm(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  return int64_t(_mm512_reduce_add_ps(acc[0]));
}

__attribute__((target("avx2,fma"))) int64_t fma_ymm(int64_t iters) {
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm256_add_ps(acc[0], acc[i]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  return int64_t(out[0]);
}

__attribute__((target("avx512f,avx512bf16"))) int64_t dpbf16_zmm(int64_t iters) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  for (int i = 1; i < kAcc; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  return int64_t(_mm512_reduce_add_ps(acc[0]));
}
#endif

}  // namespace

double read_bandwidth_gbs(size_t bytes, int reps) {
  const size_t n = bytes / 8;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
  parallel_ranges(int64_t(n), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[i] = uint64_t(i);  // first touch on the reading thread
  });
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    std::vector<uint64_t> sums(size_t(num_threads()) * 8);
    const double s = seconds([&] {
      parallel_for(num_threads(), [&](int64_t t) {
        const size_t b = n * size_t(t) / size_t(num_threads());
        const size_t e = n * size_t(t + 1) / size_t(num_threads());
        uint64_t x0 = 0, x1 = 0, x2 = 0, x3 = 0;
        for (size_t i = b; i + 4 <= e; i += 4) {
          x0 ^= buf[i], x1 ^= buf[i + 1], x2 ^= buf[i + 2], x3 ^= buf[i + 3];
        }
        sums[size_t(t) * 8] = x0 ^ x1 ^ x2 ^ x3;
      });
    });
    volatile uint64_t keep = 0;
    for (uint64_t v : sums) keep = keep ^ v;
    best = std::max(best, double(n * 8) / s / 1e9);
  }
  return best;
}

double copy_bandwidth_gbs(size_t bytes, int reps) {
  std::vector<uint8_t> src(bytes, 1), dst(bytes, 0);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double s = seconds([&] {
      parallel_ranges(int64_t(bytes), 1 << 20, [&](int64_t b, int64_t e) {
        std::memcpy(dst.data() + b, src.data() + b, size_t(e - b));
      });
    });
    best = std::max(best, 2.0 * double(bytes) / s / 1e9);
  }
  return best;
}

double int8_peak_gops(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  const double per_thread_macs = double(iters) * kAcc;
  double s = 0, lanes = 0;
  if (isa >= Isa::avx512) {
    s = on_all_threads([&] { return dpbusd_zmm(iters); }), lanes = 64;
  } else if (isa == Isa::avx_vnni) {
    s = on_all_threads([&] { return dpbusd_ymm(iters); }), lanes = 32;
  } else if (isa == Isa::avx2) {
    s = on_all_threads([&] { return maddubs_ymm(iters); }), lanes = 32;
  } else {
    return 0;
  }
  return 2.0 * lanes * per_thread_macs * num_threads() / s / 1e9;
#else
  (void)isa, (void)iters;
  return 0;
#endif
}

double fp32_peak_gflops(Isa isa, int64_t iters) {
#if defined(__x86_64__)
  double s = 0, lanes = 0;
  if (isa >= Isa::avx512) {
    s = on_all_threads([&] { return fma_zmm(iters); }), lanes = 16;
  } else if (isa >= Isa::avx2) {
    s = on_all_threads([&] { return fma_ymm(iters); }), lanes = 8;
  } else {
    return 0;
  }
  return 2.0 * lanes * double(iters) * kAcc * num_threads() / s / 1e9;
#else
  (void)isa, (void)iters;
  return 0;
#endif
}

double bf16_peak_gflops(int64_t iters) {
#if defined(__x86_64__)
  if (!bf16_backend_available(Bf16Backend::avx512_bf16)) return 0;
  const double s = on_all_threads([&] { return dpbf16_zmm(iters); });
  return 2.0 * 32 * double(iters) * kAcc * num_threads() / s / 1e9;  // 32 bf16 pairs per zmm
#else
  (void)iters;
  return 0;
#endif
}

}  // namespace kiln::ops::cpu

// bf16 GEMM on AMX tiles, on AVX-512 BF16 (VDPBF16PS), or by widening to fp32 for OpenBLAS;
// chosen at run time. Both bf16 kernels share one packed layout, built once per call:
//
//   Ap  op(A) zero-padded to (Mp, Kp) and cut into 16x32 tiles, tile (mt, kc) at
//       (mt*KC + kc)*512: 16 rows m, 32 consecutive k each (an AMX A tile, 1 KB contiguous).
//   Bp  op(B) zero-padded to (Kp, Np) in VNNI order, tile (nt, kc) at (nt*KC + kc)*512:
//       16 k-pairs, each 16 columns n x (k, k+1) (an AMX B tile, 1 KB contiguous).
//
// with Mp, Np rounded up to 32 (one 2x2-tile C block) and Kp to 32 (one tile's depth), KC = Kp/32.
// Zero padding makes every edge a full tile; the epilogue writes only the real C elements.
// Every C block is computed by one thread over k = 0..Kp in order (AMX in passes of 512 k whose
// fp32 partial sums round-trip through memory exactly), so results do not depend on the thread
// count. Napkin math at (2048 x 512 x 256): 0.54 GFLOP, ~1.3 MB bf16 packed, 4 MB fp32 stored;
// TDPBF16PS peaks near 1024 FLOP/cycle/core, so at the ~1 TFLOP/s/core measured the pack and
// the C store cost about as much as the tile FLOPs.
// GCC 12's _mm512_undefined_* (self-initialized on purpose) trips -Wmaybe-uninitialized in every
// masked or widening intrinsic; the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <cblas.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kiln/core/cpu_isa.h"
#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/core/tensor.h"
#include "kiln/ops/matmul_bf16.h"

// Kernels are compiled for their instruction sets whatever -march says, and only called after
// the run-time check, so one binary runs everywhere.
#define KILN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define KILN_AVX512BW __attribute__((target("avx512f,avx512bw,avx512vl")))
#define KILN_AMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

namespace kiln::ops::cpu {

namespace {

// ---- run-time detection --------------------------------------------------------------------

bool cpu_has_avx512_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), bw = b & (1u << 30), vl = b & (1u << 31);
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  const bool bf16 = a & (1u << 5);
  return f && bw && vl && bf16 && __builtin_cpu_supports("avx512f");  // the OS saves zmm state
}

bool cpu_has_amx_bf16() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d & (1u << 24)) && (d & (1u << 22));  // AMX-TILE, AMX-BF16
}

// Linux hands out the 8 KB tile state only on request; the grant covers every thread.
bool amx_permitted() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool ok = cpu_has_amx_bf16() && cpu_has_avx512_bf16() &&
                         syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  return ok;
}

Bf16Backend choose_backend() {
  if (const char* s = std::getenv("KILN_BF16_BACKEND"); s && *s) {
    for (Bf16Backend b : {Bf16Backend::amx, Bf16Backend::avx512_bf16, Bf16Backend::fallback}) {
      if (bf16_backend_name(b) != s) continue;
      KILN_CHECK(bf16_backend_available(b), "gemm_bf16", "KILN_BF16_BACKEND=", s,
                 " but this CPU (or kernel) cannot run it; use ",
                 bf16_backend_available(Bf16Backend::avx512_bf16) ? "avx512_bf16 or " : "",
                 "fallback, or unset it");
      return b;
    }
    fail("gemm_bf16", "KILN_BF16_BACKEND='", s, "' is not a backend: use amx, avx512_bf16 or ",
         "fallback");
  }
  // The best backend the CPU has, capped by KILN_ISA (core/cpu_isa.h).
  const Isa isa = active_isa();
  if (isa >= Isa::amx && bf16_backend_available(Bf16Backend::amx)) return Bf16Backend::amx;
  if (isa >= Isa::avx512 && bf16_backend_available(Bf16Backend::avx512_bf16))
    return Bf16Backend::avx512_bf16;
  return Bf16Backend::fallback;
}

// ---- packing -------------------------------------------------------------------------------

constexpr int kTile = 512;  // bf16 per packed tile: 16 rows x 64 bytes

int round_up(int x, int m) {
  return (x + m - 1) / m * m;
}

// Transposes a 16x16 matrix of 32-bit elements held one row per register.
KILN_AVX512 inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[g][j]: lane L holds rows 4g..4g+3 of column 4L + j.
  __m512i u[4][4];
  for (int g = 0; g < 4; ++g) {
    u[g][0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[g][1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[g][2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[g][3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // A 4x4 transpose of 128-bit lanes finishes it: row 4L + j takes lane L of u[0..3][j].
  for (int j = 0; j < 4; ++j) {
    const __m512i s0 = _mm512_shuffle_i32x4(u[0][j], u[1][j], 0x44);
    const __m512i s1 = _mm512_shuffle_i32x4(u[0][j], u[1][j], 0xEE);
    const __m512i s2 = _mm512_shuffle_i32x4(u[2][j], u[3][j], 0x44);
    const __m512i s3 = _mm512_shuffle_i32x4(u[2][j], u[3][j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(s0, s2, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(s1, s3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
  }
}

// The first `n` (<= 16) bf16 of p widened into the low halves of 16 dwords; zeros past n.
KILN_AVX512 inline __m512i load16_widened(const uint16_t* p, int n) {
  if (n <= 0) return _mm512_setzero_si512();
  const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
// Dwords (row0[i], row1[i]) for i < n: a k-pair from two rows of a k-major matrix.
KILN_AVX512 inline __m512i load_pairs(const uint16_t* row0, const uint16_t* row1, int n) {
  return _mm512_or_si512(load16_widened(row0, n), _mm512_slli_epi32(load16_widened(row1, n), 16));
}
// The first `n` (<= 32) bf16 of p; zeros past n.
KILN_AVX512 inline __m512i load32(const uint16_t* p, int n) {
  if (n <= 0) return _mm512_setzero_si512();
  const __mmask32 m = n >= 32 ? __mmask32(~0u) : __mmask32((1u << n) - 1);
  return _mm512_maskz_loadu_epi16(m, p);
}

// Ap tile (mt, kc): rows m0..m0+15 of op(A), k0..k0+31.
KILN_AVX512 void pack_a_tile(uint16_t* dst, const uint16_t* a, int M, int K, bool trans_a, int m0,
                             int k0) {
  __m512i r[16];
  if (!trans_a) {  // A (M,K): each tile row is 32 contiguous k
    for (int i = 0; i < 16; ++i)
      r[i] = m0 + i < M ? load32(a + int64_t(m0 + i) * K + k0, K - k0) : _mm512_setzero_si512();
  } else {  // A (K,M): k-pairs of two rows give (k-pair, m) dwords; transpose to (m, k-pair)
    for (int q = 0; q < 16; ++q) {
      const int k = k0 + 2 * q;
      const uint16_t* r0 = a + int64_t(k) * M + m0;
      r[q] = k >= K       ? _mm512_setzero_si512()
             : k + 1 >= K ? load16_widened(r0, M - m0)
                          : load_pairs(r0, r0 + M, M - m0);
    }
    transpose16x16(r);
  }
  for (int i = 0; i < 16; ++i) _mm512_store_si512(dst + 32 * i, r[i]);
}

// Bp tile (nt, kc): k-pairs k0/2..k0/2+15 of op(B), columns n0..n0+15.
KILN_AVX512 void pack_b_tile(uint16_t* dst, const uint16_t* b, int N, int K, bool trans_b, int n0,
                             int k0) {
  __m512i r[16];
  if (!trans_b) {  // B (K,N): interleaving rows k and k+1 gives a VNNI row directly
    for (int q = 0; q < 16; ++q) {
      const int k = k0 + 2 * q;
      const uint16_t* r0 = b + int64_t(k) * N + n0;
      r[q] = k >= K       ? _mm512_setzero_si512()
             : k + 1 >= K ? load16_widened(r0, N - n0)
                          : load_pairs(r0, r0 + N, N - n0);
    }
  } else {  // B (N,K): row n holds (n, k-pair) dwords; transpose to (k-pair, n)
    for (int i = 0; i < 16; ++i)
      r[i] = n0 + i < N ? load32(b + int64_t(n0 + i) * K + k0, K - k0) : _mm512_setzero_si512();
    transpose16x16(r);
  }
  for (int q = 0; q < 16; ++q) _mm512_store_si512(dst + 32 * q, r[q]);
}

// ---- epilogue ------------------------------------------------------------------------------

// C block (rows x cols, at most 32 x 32) = alpha * acc + beta * C; acc is 32 x 32, row-major.
KILN_AVX512 void store_block(float* c, int64_t ldc, const float* acc, int rows, int cols,
                             float alpha, float beta) {
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < rows; ++i) {
    for (int h = 0; h < 2; ++h) {
      const int n = std::min(16, cols - 16 * h);
      if (n <= 0) break;
      const __mmask16 m = n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      float* cp = c + i * ldc + 16 * h;
      __m512 v = _mm512_mul_ps(va, _mm512_load_ps(acc + 32 * i + 16 * h));
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, cp), v);
      _mm512_mask_storeu_ps(cp, m, v);
    }
  }
}

// One call's packed operands, C and the work split (see gemm_packed).
struct Job {
  const uint16_t* ap;
  const uint16_t* bp;
  float* c;
  int M, N, KC;
  float alpha, beta;
  int MB, NB, NP;    // 32-row strips, 32-column blocks, panels of kPanel blocks
  bool panel_major;  // item order: all strips of a panel before the next panel
};
constexpr int kPanel = 8;   // column blocks per work item (256 columns)
constexpr int kDepth = 16;  // k-chunks per pass (512 k): a 32-row A strip (32 KB) stays in L1

// Work item -> (strip mb, first and end column block).
inline void item_blocks(const Job& j, int64_t item, int& mb, int& nb0, int& nb1) {
  mb = int(j.panel_major ? item % j.MB : item / j.NP);
  const int np = int(j.panel_major ? item / j.MB : item % j.NP);
  nb0 = np * kPanel;
  nb1 = std::min(j.NB, nb0 + kPanel);
}

// ---- AVX-512 BF16 kernel: 8 rows x 32 columns in 16 zmm accumulators ---------------------------

KILN_AVX512 void block_avx512(const Job& j, int mb, int nb, float* acc /* 32x32 */) {
  const uint16_t* b0 = j.bp + int64_t(2 * nb) * j.KC * kTile;
  const uint16_t* b1 = b0 + int64_t(j.KC) * kTile;
  for (int rg = 0; rg < 4; ++rg) {
    const uint16_t* at = j.ap + int64_t(2 * mb + rg / 2) * j.KC * kTile + (rg % 2) * 8 * 32;
    __m512 c[8][2];
    for (int i = 0; i < 8; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int kc = 0; kc < j.KC; ++kc) {
      const uint16_t* ak = at + kc * kTile;
      const uint16_t* bk0 = b0 + kc * kTile;
      const uint16_t* bk1 = b1 + kc * kTile;
      for (int q = 0; q < 16; ++q) {
        const __m512bh x0 = (__m512bh)_mm512_load_si512(bk0 + 32 * q);
        const __m512bh x1 = (__m512bh)_mm512_load_si512(bk1 + 32 * q);
        for (int i = 0; i < 8; ++i) {
          int32_t pair;
          std::memcpy(&pair, ak + 32 * i + 2 * q, 4);
          const __m512bh y = (__m512bh)_mm512_set1_epi32(pair);
          c[i][0] = _mm512_dpbf16_ps(c[i][0], y, x0);
          c[i][1] = _mm512_dpbf16_ps(c[i][1], y, x1);
        }
      }
    }
    for (int i = 0; i < 8; ++i) {
      _mm512_store_ps(acc + 32 * (8 * rg + i), c[i][0]);
      _mm512_store_ps(acc + 32 * (8 * rg + i) + 16, c[i][1]);
    }
  }
}

KILN_AVX512 void items_avx512(const Job& j, int64_t i0, int64_t i1) {
  alignas(64) float acc[32 * 32];
  for (int64_t item = i0; item < i1; ++item) {
    int mb, nb0, nb1;
    item_blocks(j, item, mb, nb0, nb1);
    for (int nb = nb0; nb < nb1; ++nb) {
      block_avx512(j, mb, nb, acc);
      const int m0 = 32 * mb, n0 = 32 * nb;
      store_block(j.c + int64_t(m0) * j.N + n0, j.N, acc, std::min(32, j.M - m0),
                  std::min(32, j.N - n0), j.alpha, j.beta);
    }
  }
}

// ---- AMX kernel: a 32x32 C block in 4 tiles (tmm0-3), A in tmm4-5, B in tmm6-7
// -------------------

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// C block (mb, nb) += k-chunks [kc0, kc1): the accumulator comes from `in` (row stride ld_in
// floats; zeros if null) and goes to `out`. fp32 passes through memory exactly, so splitting K
// into passes gives the same bits as one pass.
KILN_AMX void block_amx(const Job& j, int mb, int nb, int kc0, int kc1, const float* in,
                        int64_t ld_in, float* out, int64_t ld_out) {
  const uint16_t* a0 = j.ap + int64_t(2 * mb) * j.KC * kTile;
  const uint16_t* a1 = a0 + int64_t(j.KC) * kTile;
  const uint16_t* b0 = j.bp + int64_t(2 * nb) * j.KC * kTile;
  const uint16_t* b1 = b0 + int64_t(j.KC) * kTile;
  if (in) {
    _tile_loadd(0, in, ld_in * 4);
    _tile_loadd(1, in + 16, ld_in * 4);
    _tile_loadd(2, in + 16 * ld_in, ld_in * 4);
    _tile_loadd(3, in + 16 * ld_in + 16, ld_in * 4);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int kc = kc0; kc < kc1; ++kc) {
    _tile_loadd(4, a0 + kc * kTile, 64);
    _tile_loadd(6, b0 + kc * kTile, 64);
    _tile_loadd(5, a1 + kc * kTile, 64);
    _tile_loadd(7, b1 + kc * kTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, ld_out * 4);
  _tile_stored(1, out + 16, ld_out * 4);
  _tile_stored(2, out + 16 * ld_out, ld_out * 4);
  _tile_stored(3, out + 16 * ld_out + 16, ld_out * 4);
}

// Each item runs K in passes of kDepth chunks over its whole panel, keeping the panel's
// accumulators in `acc` between passes. A full block with alpha == 1 and beta 0 or 1 starts
// from zero or C and ends straight in C; the others end in acc and go through store_block.
KILN_AMX void items_amx(const Job& j, int64_t i0, int64_t i1) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
  alignas(64) float acc[kPanel][32 * 32];
  for (int64_t item = i0; item < i1; ++item) {
    int mb, nb0, nb1;
    item_blocks(j, item, mb, nb0, nb1);
    const int m0 = 32 * mb, rows = std::min(32, j.M - m0);
    for (int kc0 = 0; kc0 == 0 || kc0 < j.KC; kc0 += kDepth) {
      const int kc1 = std::min(j.KC, kc0 + kDepth);
      for (int nb = nb0; nb < nb1; ++nb) {
        const int n0 = 32 * nb;
        float* cb = j.c + int64_t(m0) * j.N + n0;
        const bool full = rows == 32 && n0 + 32 <= j.N && j.alpha == 1.0f;
        const bool from_c = full && j.beta == 1.0f, direct = full && (j.beta == 0.0f || from_c);
        float* a = acc[nb - nb0];
        const float* in = kc0 > 0 ? a : from_c ? cb : nullptr;
        const int64_t ld_in = kc0 > 0 ? 32 : j.N;
        if (kc1 == j.KC && direct)
          block_amx(j, mb, nb, kc0, kc1, in, ld_in, cb, j.N);
        else
          block_amx(j, mb, nb, kc0, kc1, in, ld_in, a, 32);
      }
    }
    for (int nb = nb0; nb < nb1; ++nb) {
      const int n0 = 32 * nb;
      const bool full = rows == 32 && n0 + 32 <= j.N && j.alpha == 1.0f;
      if (full && (j.beta == 0.0f || j.beta == 1.0f)) continue;  // already in C
      store_block(j.c + int64_t(m0) * j.N + n0, j.N, acc[nb - nb0], rows, std::min(32, j.N - n0),
                  j.alpha, j.beta);
    }
  }
  _tile_release();
}

// ---- driver --------------------------------------------------------------------------------

// Grow-only 64-byte aligned scratch owned by one thread (the caller's packs, the fallback's
// fp32 copies): no allocation per call once warm.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  void* get(size_t n) {
    if (n > bytes) {
      aligned_free(p);
      p = aligned_alloc64(n);
      bytes = n;
    }
    return p;
  }
  ~Scratch() { aligned_free(p); }
};

void gemm_packed(Bf16Backend backend, float* c, const uint16_t* a, const uint16_t* b, int M, int N,
                 int K, bool trans_a, bool trans_b, float alpha, float beta) {
  const int Mp = round_up(M, 32), Np = round_up(N, 32), Kp = round_up(K, 32), KC = Kp / 32;
  const int64_t a_tiles = int64_t(Mp / 16) * KC, b_tiles = int64_t(Np / 16) * KC;
  thread_local Scratch buf;
  auto* ap = static_cast<uint16_t*>(buf.get(size_t(a_tiles + b_tiles) * kTile * 2 + 64));
  uint16_t* bp = ap + a_tiles * kTile;
  // Small problems stay on the calling thread: waking the pool costs more than they do.
  // A thread gets >= 64 tiles (64 KB) to pack and >= ~4 MFLOP per range of work items.
  parallel_ranges(a_tiles + b_tiles, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (t < a_tiles)
        pack_a_tile(ap + t * kTile, a, M, K, trans_a, int(t / KC) * 16, int(t % KC) * 32);
      else
        pack_b_tile(bp + (t - a_tiles) * kTile, b, N, K, trans_b, int((t - a_tiles) / KC) * 16,
                    int((t - a_tiles) % KC) * 32);
    }
  });

  // Work items are a 32-row strip x a panel of up to kPanel column blocks. The larger packed
  // operand is walked once: panel-major when B is larger (each B panel stays in L2 while every
  // A strip passes), strip-major otherwise. A range of items gets >= ~4 MFLOP.
  const int MB = Mp / 32, NB = Np / 32, NP = (NB + kPanel - 1) / kPanel;
  const Job job{ap, bp, c, M, N, KC, alpha, beta, MB, NB, NP, b_tiles > a_tiles};
  const int64_t item_flops = int64_t(2) * 32 * 32 * std::min(NB, kPanel) * std::max(Kp, 32);
  const int64_t grain = (int64_t(4) << 20) / item_flops + 1;
  if (backend == Bf16Backend::amx)
    parallel_ranges(int64_t(MB) * NP, grain, [&](int64_t b, int64_t e) { items_amx(job, b, e); });
  else
    parallel_ranges(int64_t(MB) * NP, grain,
                    [&](int64_t b, int64_t e) { items_avx512(job, b, e); });
}

// Widens A and B into the calling thread's fp32 scratch and runs one cblas_sgemm, like
// cpu::gemm: repeatable at a given thread count, but OpenBLAS's split depends on the count.
void gemm_fallback(float* c, const uint16_t* a, const uint16_t* b, int M, int N, int K,
                   bool trans_a, bool trans_b, float alpha, float beta) {
  const int64_t na = int64_t(M) * K, nb = int64_t(K) * N;
  thread_local Scratch buf;
  auto* af = static_cast<float*>(buf.get(size_t(na + nb) * 4 + 64));
  float* bf = af + na;
  bf16_to_f32(af, a, na);
  bf16_to_f32(bf, b, nb);
  const int lda = std::max(1, trans_a ? M : K), ldb = std::max(1, trans_b ? K : N);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, af, lda, bf, ldb, beta, c, N);
}

// ---- conversions ---------------------------------------------------------------------------

// Integer round-to-nearest-even as in core/dtype.h (VCVTNEPS2BF16 would flush subnormals).
KILN_AVX512BW void f32_to_bf16_avx512(uint16_t* dst, const float* src, int64_t n) {
  const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  int64_t i = 0;
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512i u = _mm512_maskz_loadu_epi32(m, src + i);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), quiet);
    _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(r));
  }
}

KILN_AVX512BW void bf16_to_f32_avx512(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
    _mm512_mask_storeu_epi32(dst + i, m, _mm512_slli_epi32(w, 16));
  }
}

bool has_avx512bw() {
  static const bool ok = __builtin_cpu_supports("avx512bw");
  return ok;
}

}  // namespace

std::string_view bf16_backend_name(Bf16Backend b) {
  switch (b) {
    case Bf16Backend::amx:
      return "amx";
    case Bf16Backend::avx512_bf16:
      return "avx512_bf16";
    case Bf16Backend::fallback:
      return "fallback";
  }
  return "?";
}

bool bf16_backend_available(Bf16Backend b) {
  switch (b) {
    case Bf16Backend::amx:
      return amx_permitted();
    case Bf16Backend::avx512_bf16: {
      static const bool ok = cpu_has_avx512_bf16();
      return ok;
    }
    case Bf16Backend::fallback:
      return true;
  }
  return false;
}

Bf16Backend bf16_backend_kind() {
  static const Bf16Backend b = choose_backend();
  return b;
}

std::string_view bf16_backend() {
  return bf16_backend_name(bf16_backend_kind());
}

void gemm_bf16_on(Bf16Backend backend, float* c, const uint16_t* a, const uint16_t* b, int M, int N,
                  int K, bool trans_a, bool trans_b, float alpha, float beta) {
  KILN_CHECK(bf16_backend_available(backend), "gemm_bf16", "backend ", bf16_backend_name(backend),
             " is not available on this CPU; use bf16_backend_kind()");
  if (M <= 0 || N <= 0) return;
  if (backend == Bf16Backend::fallback)
    gemm_fallback(c, a, b, M, N, K, trans_a, trans_b, alpha, beta);
  else
    gemm_packed(backend, c, a, b, M, N, K, trans_a, trans_b, alpha, beta);
}

void gemm_bf16(float* c, const uint16_t* a, const uint16_t* b, int M, int N, int K, bool trans_a,
               bool trans_b, float alpha, float beta) {
  gemm_bf16_on(bf16_backend_kind(), c, a, b, M, N, K, trans_a, trans_b, alpha, beta);
}

void f32_to_bf16(uint16_t* dst, const float* src, int64_t n) {
  parallel_ranges(n, 1 << 16, [=](int64_t b, int64_t e) {
    if (has_avx512bw())
      f32_to_bf16_avx512(dst + b, src + b, e - b);
    else
      for (int64_t i = b; i < e; ++i) dst[i] = kiln::f32_to_bf16(src[i]);
  });
}

void bf16_to_f32(float* dst, const uint16_t* src, int64_t n) {
  parallel_ranges(n, 1 << 16, [=](int64_t b, int64_t e) {
    if (has_avx512bw())
      bf16_to_f32_avx512(dst + b, src + b, e - b);
    else
      for (int64_t i = b; i < e; ++i) dst[i] = kiln::bf16_to_f32(src[i]);
  });
}

}  // namespace kiln::ops::cpu

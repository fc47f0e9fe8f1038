// cpu::matmul: y (N, rows) = x (N, cols) @ W^T with W in any QType. Like ggml's vec_dot_*_q8_*,
// x is first rounded to 8-bit per block of 32 and every block's dot product is exact integer
// arithmetic, scaled in fp32.
//
// Every format is repacked once (on first use) into one layout, PackedWeight: panels of 16 rows,
// and within a panel, per block of 32 columns, the 16 rows' values as unsigned integers u
// interleaved 4 bytes at a time, so that one 64-byte vector holds 4 consecutive values of each of
// the 16 rows. A weight is w = s * u + m, with s and m per row and per sub-block of 32 or 16
// values (q6_k, q3_k and q2_k scale every 16). Formats with a fixed offset (w = s * (u - o):
// q8_0, q4_0, q5_0, q3_k, q6_k, q8_k) keep no m: the offset comes back out exactly through the
// integer accumulator's start, -o * sum(x). Values that fit 4 bits are stored two per byte.
//
// The kernel is vpdpbusd (AVX-512 VNNI: 4 unsigned x signed byte products summed into each int32
// lane) with the lane = the weight row: 8 instructions take one activation row through a 32-value
// block of 16 weight rows, each broadcasting 4 of the activation's bytes; the block's scales then
// cost 3 fp32 operations per 16 outputs. Every weight vector loaded is used for up to 8 activation
// rows, so batched decode reads the weights once per step (not once per row) and prefill is
// compute-bound. Threads split the panels.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "kiln/core/cpu_isa.h"
#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/ops/cpu/vec16.h"
#include "kiln/ops/matmul_bf16.h"
#include "kiln/quant/block_fields.h"
#include "kiln/quant/qtensor.h"

namespace kiln::quant {

constexpr int kPanel = 16;  // weight rows per panel: one int32 lane each

struct PackedWeight {
  int rows = 0, cols = 0, panels = 0, nb = 0;  // nb = blocks of 32 per row
  bool nibble = false;                         // u < 16: two values per byte
  int subs = 1;                                // scale sub-blocks per block of 32 (1 or 2)
  bool has_min = false;                        // w = s * u + m (else w = s * (u - offset))
  int offset = 0;
  std::vector<uint8_t> w;  // (panels, nb, block_bytes()) values
  std::vector<float> s;    // (panels, nb, subs, 16) scales
  std::vector<float> m;    // (panels, nb, subs, 16) mins, when has_min
  size_t block_bytes() const { return nibble ? 256 : 512; }
};

namespace {

// One row's values in the kernel's terms: u[cols], and per 16 values s and m.
struct RowValues {
  std::vector<uint8_t> u;
  std::vector<float> s, m;
};

// Block `in` of `type` -> u (block_elems values), s and m (block_elems / 16 each). Mirrors
// dequantize_block (qtensor.cpp) with the value split into integer and scale.
void split_block(QType type, const uint8_t* in, uint8_t* u, float* s, float* m) {
  switch (type) {
    case QType::q8_0:
      for (int j = 0; j < 32; ++j) u[j] = uint8_t(in[2 + j] ^ 0x80);
      s[0] = s[1] = f16_at(in);
      return;
    case QType::q4_0:
    case QType::q4_1: {
      const uint8_t* qs = in + (type == QType::q4_1 ? 4 : 2);
      for (int j = 0; j < 16; ++j) {
        u[j] = qs[j] & 0xF;
        u[j + 16] = qs[j] >> 4;
      }
      s[0] = s[1] = f16_at(in);
      if (type == QType::q4_1) m[0] = m[1] = f16_at(in + 2);
      return;
    }
    case QType::q5_0:
    case QType::q5_1: {
      const bool q51 = type == QType::q5_1;
      uint32_t qh;
      std::memcpy(&qh, in + (q51 ? 4 : 2), 4);
      const uint8_t* qs = in + (q51 ? 8 : 6);
      for (int j = 0; j < 16; ++j) {
        u[j] = uint8_t((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10));
        u[j + 16] = uint8_t((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
      }
      s[0] = s[1] = f16_at(in);
      if (q51) m[0] = m[1] = f16_at(in + 2);
      return;
    }
    case QType::q2_k: {
      const float d = f16_at(in + 80), dmin = f16_at(in + 82);
      for (int i = 0; i < 16; ++i) {  // sub-block i: half i/8, shift 2*((i/2)%4), bytes 16*(i%2)
        const int h = i / 8, shift = 2 * ((i / 2) % 4), o = 16 * (i % 2);
        for (int l = 0; l < 16; ++l) u[16 * i + l] = (in[16 + 32 * h + o + l] >> shift) & 3;
        s[i] = d * float(in[i] & 0xF);
        m[i] = -(dmin * float(in[i] >> 4));
      }
      return;
    }
    case QType::q3_k: {
      int8_t sc[16];
      q3_k_scales(in + 96, sc);
      const float d = f16_at(in + 108);
      for (int i = 0; i < 16; ++i) {
        const int h = i / 8, j = (i / 2) % 4, o = 16 * (i % 2);
        const uint8_t bit = uint8_t(1 << (4 * h + j));
        for (int l = 0; l < 16; ++l) {
          const int q = (in[32 + 32 * h + o + l] >> (2 * j)) & 3;
          u[16 * i + l] = uint8_t(q + ((in[o + l] & bit) ? 4 : 0));  // value (u - 4) * s
        }
        s[i] = d * float(sc[i] - 32);
      }
      return;
    }
    case QType::q4_k:
    case QType::q5_k: {
      const bool five = type == QType::q5_k;
      const float d = f16_at(in), dmin = f16_at(in + 2);
      const uint8_t* qh = in + 16;
      const uint8_t* ql = in + (five ? 48 : 16);
      for (int i = 0; i < 8; ++i) {  // sub-block i of 32: nibble i%2 of bytes 32*(i/2)
        uint8_t sc, mn;
        scale_min_k4(i, in + 4, &sc, &mn);
        for (int l = 0; l < 32; ++l) {
          const uint8_t b = ql[32 * (i / 2) + l];
          int q = i % 2 ? b >> 4 : b & 0xF;
          if (five && (qh[l] >> i) & 1) q += 16;
          u[32 * i + l] = uint8_t(q);
        }
        s[2 * i] = s[2 * i + 1] = d * float(sc);
        m[2 * i] = m[2 * i + 1] = -(dmin * float(mn));
      }
      return;
    }
    case QType::q6_k: {
      const float d = f16_at(in + 208);
      for (int i = 0; i < 16; ++i) {  // half h, quarter k = (i/2)%4 of 32 values, 16 at o
        const int h = i / 8, k = (i / 2) % 4, o = 16 * (i % 2);
        const uint8_t* ql = in + 64 * h + 32 * (k % 2);
        const uint8_t* qh = in + 128 + 32 * h;
        for (int l = 0; l < 16; ++l) {
          const int lo = k < 2 ? ql[o + l] & 0xF : ql[o + l] >> 4;
          u[16 * i + l] = uint8_t(lo | (((qh[o + l] >> (2 * k)) & 3) << 4));  // (u - 32) * s
        }
        s[i] = d * float(int8_t(in[192 + 8 * h + 2 * k + i % 2]));
      }
      return;
    }
    case QType::q8_k: {
      float d;
      std::memcpy(&d, in, 4);
      for (int j = 0; j < 256; ++j) u[j] = uint8_t(in[4 + j] ^ 0x80);
      for (int i = 0; i < 16; ++i) s[i] = d;
      return;
    }
  }
}

std::shared_ptr<const PackedWeight> pack(const QTensor& q) {
  auto p = std::make_shared<PackedWeight>();
  const QType t = q.type;
  p->rows = q.rows;
  p->cols = q.cols;
  p->panels = (q.rows + kPanel - 1) / kPanel;
  p->nb = q.cols / 32;
  p->nibble = t == QType::q4_0 || t == QType::q4_1 || t == QType::q2_k || t == QType::q3_k ||
              t == QType::q4_k;
  p->subs = t == QType::q2_k || t == QType::q3_k || t == QType::q6_k ? 2 : 1;
  p->has_min = t == QType::q4_1 || t == QType::q5_1 || t == QType::q2_k || t == QType::q4_k ||
               t == QType::q5_k;
  p->offset = t == QType::q8_0 || t == QType::q8_k ? 128
              : t == QType::q4_0                   ? 8
              : t == QType::q5_0                   ? 16
              : t == QType::q6_k                   ? 32
              : t == QType::q3_k                   ? 4
                                                   : 0;
  const size_t bb = p->block_bytes();
  const int nb = p->nb, subs = p->subs;
  p->w.assign(size_t(p->panels) * nb * bb, 0);
  p->s.assign(size_t(p->panels) * nb * subs * kPanel, 0.0f);
  if (p->has_min) p->m.assign(p->s.size(), 0.0f);
  const int be = block_elems(t);
  const size_t qbb = quant::block_bytes(t);
  parallel_ranges(q.rows, 16, [&](int64_t r0, int64_t r1) {
    RowValues v;
    v.u.resize(q.cols);
    v.s.resize(q.cols / 16);
    v.m.assign(q.cols / 16, 0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = q.row(int(r));
      for (int b = 0; b < q.cols / be; ++b)
        split_block(t, row + b * qbb, &v.u[size_t(b) * be], &v.s[size_t(b) * be / 16],
                    &v.m[size_t(b) * be / 16]);
      const int64_t panel = r / kPanel, lane = r % kPanel;
      for (int b = 0; b < nb; ++b) {
        uint8_t* dst = &p->w[(size_t(panel) * nb + b) * bb];
        const uint8_t* u = &v.u[size_t(b) * 32];
        for (int g = 0; g < 8; ++g)
          for (int j = 0; j < 4; ++j) {
            if (!p->nibble) {
              dst[64 * g + 4 * lane + j] = u[4 * g + j];
            } else if (g < 4) {  // group g in the low nibbles of vector g, group g + 4 high
              dst[64 * g + 4 * lane + j] = uint8_t(u[4 * g + j] | (u[16 + 4 * g + j] << 4));
            }
          }
        for (int sb = 0; sb < subs; ++sb) {
          const size_t at = ((size_t(panel) * nb + b) * subs + sb) * kPanel + lane;
          // With one sub-block per 32, both 16-value halves carry the same scale.
          p->s[at] = v.s[size_t(b) * 2 + sb];
          if (p->has_min) p->m[at] = v.m[size_t(b) * 2 + sb];
        }
      }
    }
  });
  return p;
}

const PackedWeight& packed(const QTensor& q) {
  static std::mutex mu;
  std::shared_ptr<const PackedWeight> p = std::atomic_load(&q.packed);
  if (!p) {
    std::lock_guard<std::mutex> lock(mu);
    p = std::atomic_load(&q.packed);
    if (!p) {
      p = pack(q);
      std::atomic_store(&q.packed, p);
    }
  }
  return *p;
}

// x rounded to 8 bits per block of 32: qs (N, nb, 32), scale d (N, nb), and per block the
// integer term its sub-blocks add: -offset * sum(qs) (offset formats) or d * sum(qs) as float
// bits (formats with mins), for each of `subs` sub-blocks.
struct QActs {
  int nb = 0, subs = 1;
  std::vector<int8_t> qs;
  std::vector<float> d;
  std::vector<int32_t> term;  // (N, nb, subs)
};

void quantize_acts(QActs& a, const float* x, int N, int cols, const PackedWeight& p) {
  const int nb = cols / kBlock, subs = p.subs;
  a.nb = nb;
  a.subs = subs;
  a.qs.resize(size_t(N) * nb * kBlock);
  a.d.resize(size_t(N) * nb);
  a.term.resize(size_t(N) * nb * subs);
  parallel_ranges(int64_t(N) * nb, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      // Block i of the flat (N, cols) array, as two 16-lane vectors.
      using namespace ops::cpu::vec;
      const v16 x0 = load(x + i * kBlock), x1 = load(x + i * kBlock + kL);
      const float amax = hmax(vmax(vmax(x0, -x0), vmax(x1, -x1)));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      // Round to the nearest integer (ties to even): |x * id| <= 127, and adding 1.5 * 2^23
      // leaves no fraction bits.
      const v16 magic = splat(12582912.0f);
      const vi16 q0 = __builtin_convertvector((x0 * id + magic) - magic, vi16);
      const vi16 q1 = __builtin_convertvector((x1 * id + magic) - magic, vi16);
      const vb16 b0 = __builtin_convertvector(q0, vb16), b1 = __builtin_convertvector(q1, vb16);
      int8_t* q = &a.qs[size_t(i) * kBlock];
      std::memcpy(q, &b0, kL);
      std::memcpy(q + kL, &b1, kL);
      const int32_t sum[2] = {hsum_int(q0), hsum_int(q1)};
      a.d[i] = d;
      for (int sb = 0; sb < subs; ++sb) {
        const int32_t s = subs == 1 ? sum[0] + sum[1] : sum[sb];
        int32_t& t = a.term[size_t(i) * subs + sb];
        if (p.has_min) {
          const float f = d * float(s);
          std::memcpy(&t, &f, 4);
        } else {
          t = -p.offset * s;
        }
      }
    }
  });
}

// ---- the kernels, one per ISA tier (core/cpu_isa.h) -----------------------------------------
// Each takes rows n0 .. n0 + NT of x through panel `pn`: y[n * ldy + lane] for the panel's live
// lanes (live: a mask of the low live_rows bits), and `rows_*` steps all N rows through a panel
// in chunks of NT, so each weight vector loaded serves NT activation rows.

// Plain C++: the same arithmetic, one lane at a time. The oracle for the vector paths.
template <bool kNibble, int kSubs, bool kMin>
void rows_scalar(float* y, int ldy, const PackedWeight& p, int pn, const QActs& a, int N,
                 uint32_t live) {
  const int nb = p.nb;
  const size_t bb = p.block_bytes();
  for (int n = 0; n < N; ++n)
    for (int lane = 0; lane < kPanel; ++lane) {
      if (!((live >> lane) & 1)) continue;
      float acc = 0.0f;
      for (int b = 0; b < nb; ++b) {
        const uint8_t* wb = &p.w[(size_t(pn) * nb + b) * bb];
        const size_t ab = size_t(n) * nb + b;
        for (int sb = 0; sb < kSubs; ++sb) {
          int32_t ia = kMin ? 0 : a.term[ab * kSubs + sb];
          constexpr int kGroups = 8 / kSubs;
          for (int g = sb * kGroups; g < (sb + 1) * kGroups; ++g)
            for (int j = 0; j < 4; ++j) {
              int u;
              if constexpr (kNibble) {
                const uint8_t byte = wb[64 * (g % 4) + 4 * lane + j];
                u = g < 4 ? byte & 0xF : byte >> 4;
              } else {
                u = wb[64 * g + 4 * lane + j];
              }
              ia += u * a.qs[ab * kBlock + 4 * g + j];
            }
          const size_t at = ((size_t(pn) * nb + b) * kSubs + sb) * kPanel + lane;
          acc += float(ia) * (p.s[at] * a.d[ab]);
          if constexpr (kMin) {
            float dsum;
            std::memcpy(&dsum, &a.term[ab * kSubs + sb], 4);
            acc += p.m[at] * dsum;
          }
        }
      }
      y[size_t(n) * ldy + lane] = acc;
    }
}

#if defined(__x86_64__)

// GCC 12's _mm512_cvtepi32_ps passes _mm512_undefined_ps() as its unused merge source, which
// -Wmaybe-uninitialized reports once per instantiation: a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define KILN_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

int32_t x4_at(const QActs& a, size_t ab, int g) {  // activation bytes 4g..4g+3 of block ab
  int32_t x4;
  std::memcpy(&x4, &a.qs[ab * kBlock + 4 * g], 4);
  return x4;
}

// AVX-512 VNNI: one 16-lane vpdpbusd per 4 values of 16 weight rows, for NP panels (NP x 16
// weight rows) and NT activation rows: each weight vector loaded serves NT rows and each
// broadcast activation NP panels.
template <bool kNibble, int kSubs, bool kMin, int NT, int NP>
KILN_TARGET_AVX512 void chunk_avx512(float* y, int ldy, const PackedWeight& p, int pn,
                                     const QActs& a, int n0, const __mmask16* live) {
  const int nb = p.nb;
  const size_t bb = p.block_bytes();
  __m512 acc[NP][NT];
  for (int q = 0; q < NP; ++q)
    for (int n = 0; n < NT; ++n) acc[q][n] = _mm512_setzero_ps();
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int b = 0; b < nb; ++b) {
    const uint8_t* wb[NP];
    size_t sb0[NP];
    for (int q = 0; q < NP; ++q) {
      wb[q] = &p.w[(size_t(pn + q) * nb + b) * bb];
      sb0[q] = (size_t(pn + q) * nb + b) * kSubs;
    }
    // Decode (1-2 rows) streams the weights from memory once: ask for the lines 8 blocks
    // ahead (4 KB for q8_0), across the panel's end into the next, so more loads are in flight
    // than the hardware prefetcher keeps.
    if constexpr (NT * NP <= 2)
      for (size_t o = 0; o < bb; o += 64)
        _mm_prefetch(reinterpret_cast<const char*>(wb[0] + 8 * bb + o), _MM_HINT_T0);
    __m512i nib[NP][4];
    if constexpr (kNibble)
      for (int q = 0; q < NP; ++q)
        for (int k = 0; k < 4; ++k) nib[q][k] = _mm512_loadu_si512(wb[q] + 64 * k);
    for (int sb = 0; sb < kSubs; ++sb) {
      // For few rows, each row's sum runs in kSplit chains (groups taken in turn) so that
      // vpdpbusd's latency, not the loads, does not set the pace of decode.
      constexpr int kSplit = NT * NP >= 4 ? 1 : 4 / (NT * NP);
      __m512i ia[NP][NT], ib[NP][NT * kSplit];
      for (int n = 0; n < NT; ++n) {
        const size_t ab = size_t(n0 + n) * nb + b;
        for (int q = 0; q < NP; ++q) {
          ia[q][n] = kMin ? _mm512_setzero_si512() : _mm512_set1_epi32(a.term[ab * kSubs + sb]);
          for (int c = 0; c < kSplit; ++c) ib[q][n * kSplit + c] = _mm512_setzero_si512();
        }
      }
      constexpr int kGroups = 8 / kSubs;
      for (int gi = 0; gi < kGroups; ++gi) {
        const int g = sb * kGroups + gi;
        __m512i wg[NP];
        for (int q = 0; q < NP; ++q) {
          if constexpr (kNibble) {
            wg[q] = g < 4 ? _mm512_and_si512(nib[q][g], low4)
                          : _mm512_and_si512(_mm512_srli_epi16(nib[q][g - 4], 4), low4);
          } else {
            wg[q] = _mm512_loadu_si512(wb[q] + 64 * g);
          }
        }
        for (int n = 0; n < NT; ++n) {
          const __m512i x4 = _mm512_set1_epi32(x4_at(a, size_t(n0 + n) * nb + b, g));
          for (int q = 0; q < NP; ++q) {
            __m512i& s = kSplit == 1 ? ia[q][n] : ib[q][n * kSplit + gi % kSplit];
            s = _mm512_dpbusd_epi32(s, wg[q], x4);
          }
        }
      }
      if constexpr (kSplit > 1)
        for (int q = 0; q < NP; ++q)
          for (int n = 0; n < NT; ++n)
            for (int c = 0; c < kSplit; ++c)
              ia[q][n] = _mm512_add_epi32(ia[q][n], ib[q][n * kSplit + c]);
      for (int q = 0; q < NP; ++q) {
        const __m512 sv = _mm512_loadu_ps(&p.s[(sb0[q] + sb) * kPanel]);
        __m512 mv = _mm512_setzero_ps();
        if constexpr (kMin) mv = _mm512_loadu_ps(&p.m[(sb0[q] + sb) * kPanel]);
        for (int n = 0; n < NT; ++n) {
          const size_t ab = size_t(n0 + n) * nb + b;
          const __m512 sd = _mm512_mul_ps(sv, _mm512_set1_ps(a.d[ab]));
          acc[q][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[q][n]), sd, acc[q][n]);
          if constexpr (kMin) {
            float dsum;
            std::memcpy(&dsum, &a.term[ab * kSubs + sb], 4);
            acc[q][n] = _mm512_fmadd_ps(mv, _mm512_set1_ps(dsum), acc[q][n]);
          }
        }
      }
    }
  }
  for (int q = 0; q < NP; ++q)
    for (int n = 0; n < NT; ++n)
      _mm512_mask_storeu_ps(y + size_t(n) * ldy + q * kPanel, live[q], acc[q][n]);
}

// All N rows through NP panels (1 or 2) starting at pn, in passes of at most kWide rows of
// nearly equal size (16 rows on two panels: 6 + 5 + 5, not 6 + 6 + 4), each pass reading the
// panels' weights once; kWide is what the registers hold.
template <bool kNibble, int kSubs, bool kMin, int NP>
KILN_TARGET_AVX512 void rows_avx512(float* y, int ldy, const PackedWeight& p, int pn,
                                    const QActs& a, int N, const __mmask16* live) {
  constexpr int kWide = NP == 1 ? 8 : 6;
  const int passes = (N + kWide - 1) / kWide;
  for (int i = 0, n0 = 0; i < passes; ++i) {
    const int nt = (N - n0) / (passes - i) + ((N - n0) % (passes - i) != 0);
    float* yn = y + size_t(n0) * ldy;
    switch (nt) {
#define KILN_CHUNK(K)                                                         \
  case K:                                                                     \
    if constexpr (K <= kWide)                                                 \
      chunk_avx512<kNibble, kSubs, kMin, K, NP>(yn, ldy, p, pn, a, n0, live); \
    break;
      KILN_CHUNK(1)
      KILN_CHUNK(2)
      KILN_CHUNK(3) KILN_CHUNK(4) KILN_CHUNK(5) KILN_CHUNK(6) KILN_CHUNK(7) KILN_CHUNK(8)
#undef KILN_CHUNK
    }
    n0 += nt;
  }
}

// AVX2, with and without AVX-VNNI: one source (qmatmul_avx2.inc) compiled twice, for each
// target, so every intrinsic inlines into a function built for it.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr bool kVnni = false;
#include "kiln/quant/qmatmul_avx2.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avxvnni")
namespace avx_vnni {
constexpr bool kVnni = true;
#include "kiln/quant/qmatmul_avx2.inc"
}  // namespace avx_vnni
#pragma GCC pop_options

#endif  // __x86_64__

// y = x @ W^T on tier `isa`: threads split the panels; each panel takes all N rows of x.
template <bool kNibble, int kSubs, bool kMin>
void matmul_packed(float* y, const QActs& a, const PackedWeight& p, int N, Isa isa) {
  const int rows = p.rows;
  [[maybe_unused]] const bool sign8 = !kNibble && p.offset == 128;  // q8_0, q8_k
  // Panels per task: enough work to amortize the fork, small enough to balance the threads.
  const int64_t grain = std::max<int64_t>(1, 256 / std::max<int64_t>(1, int64_t(p.nb) * N));
  parallel_ranges(p.panels, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t pn = q0; pn < q1; ++pn) {
      const int live_rows = std::min(kPanel, rows - int(pn) * kPanel);
      const auto live = (uint32_t(1) << live_rows) - 1;
      float* yp = y + pn * kPanel;
      switch (isa) {
#if defined(__x86_64__)
        case Isa::amx:
        case Isa::avx512:
          // Byte weights (q8_0, q6_k, ...) for 12 rows or more: two panels at once (the second
          // may be partial), ~1.3x on 16 rows of q8_0. Nibbles need the registers for unpacking,
          // and up to 8 rows one panel per pass already reads the weights once.
          if (!kNibble && N >= 12 && pn + 1 < q1) {
            const int live2 = std::min(kPanel, rows - int(pn + 1) * kPanel);
            const __mmask16 m[2] = {__mmask16(live), __mmask16((uint32_t(1) << live2) - 1)};
            rows_avx512<kNibble, kSubs, kMin, 2>(yp, rows, p, int(pn), a, N, m);
            ++pn;
          } else {
            const __mmask16 m = __mmask16(live);
            rows_avx512<kNibble, kSubs, kMin, 1>(yp, rows, p, int(pn), a, N, &m);
          }
          break;
        case Isa::avx_vnni:
          avx_vnni::rows<kNibble, kSubs, kMin, false>(yp, rows, p, int(pn), a, N, live_rows);
          break;
        case Isa::avx2:
          if (sign8)
            avx2::rows<kNibble, kSubs, kMin, true>(yp, rows, p, int(pn), a, N, live_rows);
          else
            avx2::rows<kNibble, kSubs, kMin, false>(yp, rows, p, int(pn), a, N, live_rows);
          break;
#endif
        default:
          rows_scalar<kNibble, kSubs, kMin>(yp, rows, p, int(pn), a, N, live);
      }
    }
  });
}

// Prefill on AMX: W dequantized to bf16 once per call (rows x cols, read once per N rows of x).
void matmul_bf16_prefill(float* y, const float* x, const QTensor& w, int N) {
  thread_local std::vector<uint16_t> wb, xb;
  wb.resize(size_t(w.rows) * w.cols);
  xb.resize(size_t(N) * w.cols);
  // A plain pointer: inside the pool, the name `wb` would be each worker's own thread_local.
  uint16_t* const wout = wb.data();
  const int be = block_elems(w.type), nb = w.cols / be;
  const size_t bb = block_bytes(w.type);
  parallel_ranges(w.rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> rowf(w.cols);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.row(int(r));
      for (int b = 0; b < nb; ++b)
        dequantize_block(row + size_t(b) * bb, rowf.data() + size_t(b) * be, w.type);
      // Round to nearest even bf16 (weights are finite: no NaN case needed).
      uint16_t* out = wout + size_t(r) * w.cols;
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(rowf.data());
      for (int k = 0; k < w.cols; ++k) {
        const uint32_t u = bits[k];
        out[k] = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      }
    }
  });
  ops::cpu::f32_to_bf16(xb.data(), x, int64_t(N) * w.cols);
  ops::cpu::gemm_bf16(y, xb.data(), wb.data(), N, w.rows, w.cols, false, true, 1.0f, 0.0f);
}

}  // namespace

namespace cpu {

void matmul(float* y, const float* x, const QTensor& w, int N) {
  matmul(y, x, w, N, active_isa());
}

void matmul(float* y, const float* x, const QTensor& w, int N, Isa isa) {
  KILN_CHECK(N >= 0, "quant.matmul", "N must be >= 0, got ", N);
  KILN_CHECK(w.cols % block_elems(w.type) == 0 && w.data.size() == size_t(w.rows) * w.row_bytes(),
             "quant.matmul", "malformed ", qtype_name(w.type), " QTensor (", w.rows, ", ", w.cols,
             ") with ", w.data.size(), " bytes");
  KILN_CHECK(isa_supported(isa), "quant.matmul", "this CPU cannot run the ", isa_name(isa),
             " kernels");
  if (N == 0 || w.rows == 0) return;
  if (isa == Isa::amx && N >= kBf16PrefillRows &&
      ops::cpu::bf16_backend_available(ops::cpu::Bf16Backend::amx))
    return matmul_bf16_prefill(y, x, w, N);
  const PackedWeight& p = packed(w);
  thread_local QActs a;  // reused across calls: decode calls this thousands of times
  quantize_acts(a, x, N, w.cols, p);
  if (p.nibble) {
    if (p.subs == 2) {
      return p.has_min ? matmul_packed<true, 2, true>(y, a, p, N, isa)
                       : matmul_packed<true, 2, false>(y, a, p, N, isa);
    }
    return p.has_min ? matmul_packed<true, 1, true>(y, a, p, N, isa)
                     : matmul_packed<true, 1, false>(y, a, p, N, isa);
  }
  if (p.subs == 2) return matmul_packed<false, 2, false>(y, a, p, N, isa);  // q6_k
  return p.has_min ? matmul_packed<false, 1, true>(y, a, p, N, isa)
                   : matmul_packed<false, 1, false>(y, a, p, N, isa);
}

}  // namespace cpu
}  // namespace kiln::quant

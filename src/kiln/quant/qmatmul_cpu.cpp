// cpu::matmul: y (N, rows) = x (N, cols) @ W^T with W in q8_0/q4_0 blocks. Like ggml's
// vec_dot_q8_0_q8_0 / vec_dot_q4_0_q8_0, x is first rounded to 8-bit per block of 32 and every
// block's dot product is exact integer arithmetic, scaled by d_w * d_x in fp32.
//
// The integer dot product is vpdpbusd (AVX-512 VNNI: unsigned 8-bit x signed 8-bit, 4 products
// summed into each int32 lane). The activations are the signed side; the weights are made
// unsigned — q8_0 by flipping the top bit (w + 128), q4_0 as its raw nibbles (w + 8) — and the
// offset comes back out exactly through the accumulator's starting value, -offset * sum(qx),
// precomputed once per activation block.
//
// Cost: one pass over W's bytes per 4 rows of x (decode N = 1 is bound by reading W; prefill
// reuses each decoded weight block for 4 activation rows). Threads split W's rows.
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/quant/qtensor.h"

#include "kiln/ops/matmul_bf16.h"

namespace kiln::quant::cpu {
namespace {

// x rounded to q8_0 with fp32 scales: qs (N, nb, 32), d (N, nb), sum of qs (N, nb).
struct QActs {
  int nb = 0;
  std::vector<int8_t> qs;
  std::vector<float> d;
  std::vector<int32_t> sum;
};

void quantize_acts(QActs& a, const float* x, int N, int cols) {
  const int nb = cols / kBlock;
  a.nb = nb;
  a.qs.resize(size_t(N) * nb * kBlock);
  a.d.resize(size_t(N) * nb);
  a.sum.resize(size_t(N) * nb);
  parallel_ranges(int64_t(N) * nb, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* xb = x + i * kBlock;  // block i of the flat (N, cols) array
      float amax = 0.0f;
      for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
      int8_t* q = &a.qs[size_t(i) * kBlock];
      int32_t s = 0;
      for (int j = 0; j < kBlock; ++j) {
        q[j] = int8_t(std::nearbyint(xb[j] * id));
        s += q[j];
      }
      a.d[i] = d;
      a.sum[i] = s;
    }
  });
}

inline float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 32 weights of a block as unsigned bytes (w + offset).
template <QType T>
inline __m256i load_weights_u8(const uint8_t* qs) {
  if constexpr (T == QType::q8_0) {
    return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs)),
                            _mm256_set1_epi8(char(0x80)));
  } else {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
  }
}

// y[n * ldy] = dot(W row, x row n) for NT consecutive activation rows starting at n0.
template <QType T, int NT>
void dot_rows(float* y, int ldy, const uint8_t* wrow, const QActs& a, int n0) {
  constexpr int off = T == QType::q8_0 ? 128 : 8;
  constexpr size_t bb = T == QType::q8_0 ? 34 : 18;
  const int nb = a.nb;
  __m256 acc[NT];
  for (int i = 0; i < NT; ++i) acc[i] = _mm256_setzero_ps();
  for (int b = 0; b < nb; ++b) {
    const uint8_t* blk = wrow + size_t(b) * bb;
    const float dw = load_f16(blk);
    const __m256i wu = load_weights_u8<T>(blk + 2);
    for (int i = 0; i < NT; ++i) {
      const size_t xb = size_t(n0 + i) * nb + b;
      const __m256i init = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-off * a.sum[xb]));
      const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&a.qs[xb * kBlock]));
      const __m256i dot = _mm256_dpbusd_epi32(init, wu, xq);
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(dw * a.d[xb]), acc[i]);
    }
  }
  for (int i = 0; i < NT; ++i) y[size_t(i) * ldy] = hsum(acc[i]);
}

#else  // portable: the same integer arithmetic in scalar code

template <QType T, int NT>
void dot_rows(float* y, int ldy, const uint8_t* wrow, const QActs& a, int n0) {
  constexpr size_t bb = T == QType::q8_0 ? 34 : 18;
  for (int i = 0; i < NT; ++i) {
    float acc = 0.0f;
    for (int b = 0; b < a.nb; ++b) {
      const uint8_t* blk = wrow + size_t(b) * bb;
      const size_t xb = size_t(n0 + i) * a.nb + b;
      const int8_t* xq = &a.qs[xb * kBlock];
      int32_t s = 0;
      if constexpr (T == QType::q8_0) {
        for (int j = 0; j < kBlock; ++j) s += int8_t(blk[2 + j]) * xq[j];
      } else {
        for (int j = 0; j < kBlock / 2; ++j)
          s += (int(blk[2 + j] & 0x0f) - 8) * xq[j] + (int(blk[2 + j] >> 4) - 8) * xq[j + 16];
      }
      acc += float(s) * (load_f16(blk) * a.d[xb]);
    }
    y[size_t(i) * ldy] = acc;
  }
}

#endif

template <QType T>
void matmul_t(float* y, const QActs& a, const QTensor& w, int N) {
  const int rows = w.rows;
  const size_t rb = w.row_bytes();
  // Rows per task: enough work to amortize the fork, small enough to balance threads.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, int64_t(a.nb) * N));
  parallel_ranges(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int n0 = 0; n0 < N; n0 += 4) {
      const int nt = std::min(4, N - n0);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* wrow = w.data.data() + size_t(r) * rb;
        float* yr = y + size_t(n0) * rows + r;
        switch (nt) {
          case 4:
            dot_rows<T, 4>(yr, rows, wrow, a, n0);
            break;
          case 3:
            dot_rows<T, 3>(yr, rows, wrow, a, n0);
            break;
          case 2:
            dot_rows<T, 2>(yr, rows, wrow, a, n0);
            break;
          default:
            dot_rows<T, 1>(yr, rows, wrow, a, n0);
            break;
        }
      }
    }
  });
}

// Prefill on AMX: W dequantized to bf16 once per call (rows x cols, read once per N rows of x).
void matmul_bf16_prefill(float* y, const float* x, const QTensor& w, int N) {
  thread_local std::vector<uint16_t> wb, xb;
  wb.resize(size_t(w.rows) * w.cols);
  xb.resize(size_t(N) * w.cols);
  const int nb = w.cols / kBlock;
  // A plain pointer: inside the pool, the name `wb` would be each worker's own thread_local.
  uint16_t* const wout = wb.data();
  const QType type = w.type;
  const size_t bb = block_bytes(type);
  parallel_ranges(w.rows, 16, [&](int64_t r0, int64_t r1) {
    // Branch-free loops over one row, so the compiler vectorizes the dequantize and the
    // round-to-nearest-even bf16 conversion (weights are finite: no NaN case needed).
    std::vector<float> rowf(w.cols);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.row(int(r));
      for (int b = 0; b < nb; ++b) {
        const uint8_t* blk = row + size_t(b) * bb;
        uint16_t h;
        std::memcpy(&h, blk, 2);
        const float d = f16_to_f32(h);
        float* o = rowf.data() + size_t(b) * kBlock;
        if (type == QType::q8_0) {
          const int8_t* q = reinterpret_cast<const int8_t*>(blk + 2);
          for (int j = 0; j < kBlock; ++j) o[j] = d * float(q[j]);
        } else {
          const uint8_t* q = blk + 2;
          for (int j = 0; j < kBlock / 2; ++j) {
            o[j] = d * float(int(q[j] & 15) - 8);
            o[j + kBlock / 2] = d * float(int(q[j] >> 4) - 8);
          }
        }
      }
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

void matmul(float* y, const float* x, const QTensor& w, int N) {
  KILN_CHECK(N >= 0, "quant.matmul", "N must be >= 0, got ", N);
  KILN_CHECK(w.cols % kBlock == 0 && w.data.size() == size_t(w.rows) * w.row_bytes(),
             "quant.matmul", "malformed QTensor (", w.rows, ", ", w.cols, ") with ", w.data.size(),
             " bytes");
  if (N == 0 || w.rows == 0) return;
  static const bool amx = ops::cpu::bf16_backend_kind() == ops::cpu::Bf16Backend::amx;
  if (amx && N >= kBf16PrefillRows) return matmul_bf16_prefill(y, x, w, N);
  thread_local QActs a;  // reused across calls: decode calls this thousands of times
  quantize_acts(a, x, N, w.cols);
  if (w.type == QType::q8_0) {
    matmul_t<QType::q8_0>(y, a, w, N);
  } else {
    matmul_t<QType::q4_0>(y, a, w, N);
  }
}

}  // namespace kiln::quant::cpu

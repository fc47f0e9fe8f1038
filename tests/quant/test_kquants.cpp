// The formats beyond q8_0 and q4_0 (q4_1, q5_0, q5_1 and the K-quants q2_k..q8_k):
// dequantize_block against a plain transcription of ggml's block definitions (ggml-common.h and
// dequantize_row_* in ggml-quants.c, written here element by element in the order ggml
// computes), bit for bit on random blocks; and cpu::matmul (the packed VNNI kernel) against
// ref::matmul within the activation-rounding bound, for every format and batch shape.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/quant/qtensor.h"
#include "matmul_bound.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

const QType kAll[] = {QType::q8_0, QType::q4_0, QType::q4_1, QType::q5_0, QType::q5_1, QType::q2_k,
                      QType::q3_k, QType::q4_k, QType::q5_k, QType::q6_k, QType::q8_k};

float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// A random block: random bytes, with the f16/f32 scale fields set to finite values of about
// `scale` (so values stay well inside fp32).
std::vector<uint8_t> random_block(QType t, std::mt19937& rng, float scale) {
  std::vector<uint8_t> b(block_bytes(t));
  for (auto& v : b) v = uint8_t(rng());
  std::uniform_real_distribution<float> u(0.25f * scale, scale);
  auto f16 = [&](size_t at) { put_f16(&b[at], (rng() & 1 ? -1.0f : 1.0f) * u(rng)); };
  switch (t) {
    case QType::q8_0:
    case QType::q4_0:
    case QType::q5_0:
      f16(0);
      break;
    case QType::q4_1:
    case QType::q5_1:
    case QType::q4_k:
    case QType::q5_k:
      f16(0);
      f16(2);
      break;
    case QType::q2_k:
      f16(80);
      f16(82);
      break;
    case QType::q3_k:
      f16(108);
      break;
    case QType::q6_k:
      f16(208);
      break;
    case QType::q8_k: {
      const float d = u(rng);
      std::memcpy(&b[0], &d, 4);
      break;
    }
  }
  return b;
}

// ---- ggml's definitions, transcribed ----

void ref_q4_1(const uint8_t* x, float* y) {
  const float d = h2f(x), m = h2f(x + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = (x[4 + j] & 0x0F) * d + m;
    y[j + 16] = (x[4 + j] >> 4) * d + m;
  }
}

void ref_q5(const uint8_t* x, float* y, bool one) {
  const float d = h2f(x), m = one ? h2f(x + 2) : 0.0f;
  uint32_t qh;
  std::memcpy(&qh, x + (one ? 4 : 2), 4);
  const uint8_t* qs = x + (one ? 8 : 6);
  for (int j = 0; j < 16; ++j) {
    const uint8_t xh_0 = ((qh >> (j + 0)) << 4) & 0x10;
    const uint8_t xh_1 = ((qh >> (j + 12))) & 0x10;
    if (one) {
      y[j] = ((qs[j] & 0x0F) | xh_0) * d + m;
      y[j + 16] = ((qs[j] >> 4) | xh_1) * d + m;
    } else {
      y[j] = (((qs[j] & 0x0F) | xh_0) - 16) * d;
      y[j + 16] = (((qs[j] >> 4) | xh_1) - 16) * d;
    }
  }
}

void ref_q2_k(const uint8_t* x, float* y) {
  const uint8_t* scales = x;
  const uint8_t* q = x + 16;
  const float d = h2f(x + 80), min = h2f(x + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = scales[is++];
      float dl = d * (sc & 0xF), ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l] >> shift) & 3)) - ml;
      sc = scales[is++];
      dl = d * (sc & 0xF);
      ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3)) - ml;
      shift += 2;
    }
    q += 32;
  }
}

void ref_q3_k(const uint8_t* x, float* y) {
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  uint32_t aux[4];
  const int8_t* scales = reinterpret_cast<const int8_t*>(aux);
  const float d_all = h2f(x + 108);
  const uint8_t* q = x + 32;
  const uint8_t* hm = x;
  uint8_t m = 1;
  std::memcpy(aux, x + 96, 12);
  uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  int is = 0;
  for (int n = 0; n < 256; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * ((int8_t)((q[l + 0] >> shift) & 3) - ((hm[l + 0] & m) ? 0 : 4));
      dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * ((int8_t)((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      shift += 2;
      m <<= 1;
    }
    q += 32;
  }
}

void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

void ref_q4_k(const uint8_t* x, float* y) {
  const uint8_t* q = x + 16;
  const float d = h2f(x), min = h2f(x + 2);
  int is = 0;
  uint8_t sc, m;
  for (int j = 0; j < 256; j += 64) {
    get_scale_min_k4(is + 0, x + 4, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    get_scale_min_k4(is + 1, x + 4, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

void ref_q5_k(const uint8_t* x, float* y) {
  const uint8_t* ql = x + 48;
  const uint8_t* qh = x + 16;
  const float d = h2f(x), min = h2f(x + 2);
  int is = 0;
  uint8_t sc, m;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 256; j += 64) {
    get_scale_min_k4(is + 0, x + 4, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    get_scale_min_k4(is + 1, x + 4, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

void ref_q6_k(const uint8_t* x, float* y) {
  const float d = h2f(x + 208);
  const uint8_t* ql = x;
  const uint8_t* qh = x + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      int is = l / 16;
      const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void ref_q8_k(const uint8_t* x, float* y) {
  float d;
  std::memcpy(&d, x, 4);
  for (int j = 0; j < 256; ++j) y[j] = d * int8_t(x[4 + j]);
}

void ref_block(QType t, const uint8_t* x, float* y) {
  switch (t) {
    case QType::q8_0:
      for (int j = 0; j < 32; ++j) y[j] = int8_t(x[2 + j]) * h2f(x);
      return;
    case QType::q4_0:
      for (int j = 0; j < 16; ++j) {
        y[j] = ((x[2 + j] & 0x0F) - 8) * h2f(x);
        y[j + 16] = ((x[2 + j] >> 4) - 8) * h2f(x);
      }
      return;
    case QType::q4_1:
      return ref_q4_1(x, y);
    case QType::q5_0:
      return ref_q5(x, y, false);
    case QType::q5_1:
      return ref_q5(x, y, true);
    case QType::q2_k:
      return ref_q2_k(x, y);
    case QType::q3_k:
      return ref_q3_k(x, y);
    case QType::q4_k:
      return ref_q4_k(x, y);
    case QType::q5_k:
      return ref_q5_k(x, y);
    case QType::q6_k:
      return ref_q6_k(x, y);
    case QType::q8_k:
      return ref_q8_k(x, y);
  }
}

// A random (rows, cols) QTensor of type t whose values have magnitude about `mag`.
QTensor random_qtensor(QType t, int rows, int cols, std::mt19937& rng, float mag) {
  QTensor q;
  q.type = t;
  q.rows = rows;
  q.cols = cols;
  const int nblocks = rows * (cols / block_elems(t));
  // Per-format scale so that |value| ~ mag: the integer ranges differ by format.
  const bool k = block_elems(t) == 256;
  const float scale = t == QType::q8_0 || t == QType::q8_k ? mag / 64
                      : k && t != QType::q8_k              ? mag / 256
                                                           : mag / 8;
  for (int i = 0; i < nblocks; ++i) {
    std::vector<uint8_t> b = random_block(t, rng, scale);
    q.data.insert(q.data.end(), b.begin(), b.end());
  }
  return q;
}

TEST(KQuants, DequantizeEqualsGgmlBitForBit) {
  std::mt19937 rng(11);
  for (QType t : kAll) {
    const int n = block_elems(t);
    std::vector<float> got(n), want(n);
    for (int i = 0; i < 500; ++i) {
      std::vector<uint8_t> b = random_block(t, rng, 0.01f);
      dequantize_block(b.data(), got.data(), t);
      ref_block(t, b.data(), want.data());
      ASSERT_EQ(0, std::memcmp(got.data(), want.data(), size_t(n) * 4))
          << qtype_name(t) << " block " << i;
    }
  }
}

TEST(KQuants, TypeTable) {
  for (QType t : kAll) {
    QType back;
    ASSERT_TRUE(qtype_from_ggml(ggml_type_id(t), &back)) << qtype_name(t);
    EXPECT_EQ(back, t);
    EXPECT_EQ(qtype_from_name(qtype_name(t)), t);
  }
  EXPECT_EQ(qtype_from_name("Q4_K"), QType::q4_k);
  QType ignored;
  EXPECT_FALSE(qtype_from_ggml(0, &ignored));  // F32
  EXPECT_FALSE(qtype_from_ggml(1, &ignored));  // F16
  // kiln writes every format it reads (tests/quant/test_kquant_write.cpp checks the bytes).
  for (QType t : kAll) EXPECT_TRUE(can_quantize(t)) << qtype_name(t);
}

// As in test_qtensor.cpp: rounding x to 8 bits per block of 32 moves y by at most
// sum_b (d_x[b] / 2) * sum_{k in b} |w_k|, plus fp32 summation.
TEST(KQuants, CpuMatmulMatchesReference) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (QType t : kAll) {
    const int be = block_elems(t);
    for (int cols : {be, 3 * be}) {
      for (int rows : {1, 17, 40}) {
        for (int N : {1, 2, 5, 8, 16, 23}) {
          QTensor q = random_qtensor(t, rows, cols, rng, 0.05f);
          std::vector<float> x(size_t(N) * cols), wd(size_t(rows) * cols);
          for (auto& v : x) v = g(rng);
          dequantize(q, wd.data());
          std::vector<float> y(size_t(N) * rows), yr(size_t(N) * rows);
          ref::matmul(yr.data(), x.data(), q, N);
          for (Isa isa : supported_isas()) {
            cpu::matmul(y.data(), x.data(), q, N, isa);
            for (int n = 0; n < N; ++n)
              for (int r = 0; r < rows; ++r) {
                double mag = 0;
                double bound = test::activation_rounding_bound(x, wd, n, r, cols, &mag);
                if (N >= cpu::kBf16PrefillRows && isa == Isa::amx)
                  bound = std::max(bound, std::ldexp(1.0, -8) * mag);
                bound = bound * 1.001 + 8.0 * cols * 6e-8 * mag + 1e-30;
                const double err =
                    std::fabs(double(y[size_t(n) * rows + r]) - yr[size_t(n) * rows + r]);
                ASSERT_LE(err, bound)
                    << qtype_name(t) << " rows=" << rows << " cols=" << cols << " N=" << N
                    << " n=" << n << " r=" << r << " isa=" << isa_name(isa);
              }
          }
        }
      }
    }
  }
}

// Every tier computes the same integer dot products and scales them alike: the vector paths
// agree with the plain C++ one up to fp32 summation order (prefill on AMX aside: bf16).
TEST(KQuants, EveryIsaTierAgreesWithScalar) {
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  RecordProperty("tiers", [] {
    std::string s;
    for (Isa isa : supported_isas()) s += std::string(isa_name(isa)) + " ";
    return s;
  }());
  for (QType t : kAll) {
    const int cols = 2 * block_elems(t), rows = 37;
    for (int N : {1, 3, 4, 9, 40}) {
      QTensor q = random_qtensor(t, rows, cols, rng, 0.05f);
      std::vector<float> x(size_t(N) * cols);
      for (auto& v : x) v = g(rng);
      std::vector<float> ys(size_t(N) * rows), y(size_t(N) * rows);
      cpu::matmul(ys.data(), x.data(), q, N, Isa::scalar);
      for (Isa isa : supported_isas()) {
        if (isa == Isa::amx && N >= cpu::kBf16PrefillRows) continue;
        cpu::matmul(y.data(), x.data(), q, N, isa);
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_NEAR(y[i], ys[i], 1e-5 * (1.0 + std::fabs(ys[i])))
              << qtype_name(t) << " N=" << N << " i=" << i << " isa=" << isa_name(isa);
      }
    }
  }
}

TEST(KQuants, IsaTiers) {
  EXPECT_TRUE(isa_supported(Isa::scalar));
  EXPECT_EQ(best_isa_up_to(Isa::scalar), Isa::scalar);
  EXPECT_EQ(supported_isas().front(), Isa::scalar);
  for (Isa isa : supported_isas()) EXPECT_EQ(best_isa_up_to(isa), isa) << isa_name(isa);
  EXPECT_TRUE(isa_supported(active_isa()));
  std::mt19937 rng(1);
  QTensor q = random_qtensor(QType::q8_0, 4, 32, rng, 0.1f);
  std::vector<float> x(32, 1.0f), y(4);
  for (Isa isa : {Isa::avx2, Isa::avx_vnni, Isa::avx512, Isa::amx}) {
    if (isa_supported(isa)) continue;
    try {
      cpu::matmul(y.data(), x.data(), q, 1, isa);
      ADD_FAILURE() << isa_name(isa) << " is not on this CPU and must be refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(isa_name(isa)), std::string::npos) << e.what();
    }
  }
}

}  // namespace

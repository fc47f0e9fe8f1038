// q8_0 / q4_0: encodings byte-identical to ggml's reference quantizers (re-implemented here from
// ggml-quants.c, independently of kiln's code, with the F16C instruction ggml uses on x86 for
// the fp16 scale), decode error bounds derived from the rounding, and cpu::matmul against
// ref::matmul within the bound that rounding the activations to q8_0 implies.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/matmul_bf16.h"
#include "kiln/quant/qtensor.h"
#include "matmul_bound.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

uint16_t ggml_fp32_to_fp16(float f) {
  return _cvtss_sh(f, 0);
}
float ggml_fp16_to_fp32(uint16_t h) {
  return _cvtsh_ss(h);
}

// ggml-quants.c quantize_row_q8_0_ref.
void ggml_quantize_row_q8_0(const float* x, uint8_t* y, int k) {
  for (int i = 0; i < k / 32; i++) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = std::max(amax, fabsf(x[i * 32 + j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    uint8_t* blk = y + i * 34;
    uint16_t h = ggml_fp32_to_fp16(d);
    std::memcpy(blk, &h, 2);
    for (int j = 0; j < 32; ++j) {
      const float x0 = x[i * 32 + j] * id;
      blk[2 + j] = uint8_t(int8_t(roundf(x0)));
    }
  }
}

// ggml-quants.c quantize_row_q4_0_ref.
void ggml_quantize_row_q4_0(const float* x, uint8_t* y, int k) {
  const int qk = 32;
  for (int i = 0; i < k / qk; i++) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk; j++) {
      const float v = x[i * qk + j];
      if (amax < fabsf(v)) {
        amax = fabsf(v);
        max = v;
      }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    uint8_t* blk = y + i * 18;
    uint16_t h = ggml_fp32_to_fp16(d);
    std::memcpy(blk, &h, 2);
    for (int j = 0; j < qk / 2; ++j) {
      const float x0 = x[i * qk + 0 + j] * id;
      const float x1 = x[i * qk + qk / 2 + j] * id;
      const uint8_t xi0 = std::min<int8_t>(15, int8_t(x0 + 8.5f));
      const uint8_t xi1 = std::min<int8_t>(15, int8_t(x1 + 8.5f));
      blk[2 + j] = uint8_t(xi0 | (xi1 << 4));
    }
  }
}

// Awkward inputs on purpose: ties (k + 0.5 steps), zeros, all-equal blocks, huge and tiny
// magnitudes, negative and positive extremes.
std::vector<float> test_values(int rows, int cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> w(size_t(rows) * cols);
  for (auto& v : w) v = g(rng);
  for (int b = 0; b < int(w.size()) / 32; ++b) {
    float* blk = &w[size_t(b) * 32];
    switch (b % 7) {
      case 1:
        std::fill(blk, blk + 32, 0.0f);
        break;
      case 2:
        for (int j = 0; j < 32; ++j) blk[j] = float(j - 16) * 0.5f;  // exact ties after scaling
        break;
      case 3:
        std::fill(blk, blk + 32, -3.0f);
        break;
      case 4:
        for (int j = 0; j < 32; ++j) blk[j] *= 1000.0f;
        break;
      case 5:
        for (int j = 0; j < 32; ++j) blk[j] *= 1e-3f;
        break;
      default:
        break;
    }
  }
  return w;
}

TEST(QTensor, EncodingsAreByteIdenticalToGgml) {
  for (int cols : {32, 64, 96, 4096}) {
    for (int rows : {1, 7, 33}) {
      std::vector<float> w = test_values(rows, cols, uint32_t(rows * 7919 + cols));
      for (QType t : {QType::q8_0, QType::q4_0}) {
        QTensor q = quantize(w.data(), rows, cols, t);
        ASSERT_EQ(q.data.size(), size_t(rows) * (cols / 32) * block_bytes(t));
        std::vector<uint8_t> expect(q.data.size());
        for (int r = 0; r < rows; ++r) {
          uint8_t* out = expect.data() + size_t(r) * q.row_bytes();
          if (t == QType::q8_0) {
            ggml_quantize_row_q8_0(&w[size_t(r) * cols], out, cols);
          } else {
            ggml_quantize_row_q4_0(&w[size_t(r) * cols], out, cols);
          }
        }
        for (size_t i = 0; i < expect.size(); ++i)
          ASSERT_EQ(int(q.data[i]), int(expect[i]))
              << qtype_name(t) << " rows=" << rows << " cols=" << cols << " byte " << i;
      }
    }
  }
}

TEST(QTensor, KnownBlock) {
  // x = j - 16 for j < 32: amax = 16, d = 16/127; x = -16 -> -127; x = 15 -> round(119.06) = 119.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = float(j - 16);
  QTensor q8 = quantize(x.data(), 1, 32, QType::q8_0);
  uint16_t h;
  std::memcpy(&h, q8.data.data(), 2);
  EXPECT_EQ(h, ggml_fp32_to_fp16(16.0f / 127.0f));
  EXPECT_EQ(int8_t(q8.data[2]), -127);
  EXPECT_EQ(int8_t(q8.data[2 + 31]), 119);
  // q4_0: max = -16 (largest magnitude, negative) -> d = 2; x = -16 -> 0, x = 15 -> 15 (clamped
  // from 16), x = 0 (j = 16) -> 8; element j and j + 16 share byte j.
  QTensor q4 = quantize(x.data(), 1, 32, QType::q4_0);
  std::memcpy(&h, q4.data.data(), 2);
  EXPECT_EQ(ggml_fp16_to_fp32(h), 2.0f);
  EXPECT_EQ(q4.data[2 + 0], uint8_t(0x0 | (0x8 << 4)));
  // j = 15: x = -1 -> -0.5 + 8.5 = 8 (low nibble); j = 31: x = 15 -> 16 -> 15 (high nibble).
  EXPECT_EQ(q4.data[2 + 15], uint8_t(0x8 | (15 << 4)));
}

// |x - deq(q(x))| per element. q8_0: q = round(x / d) gives |x - q d| <= d / 2 with the fp32 d;
// storing d as fp16 d' adds |q| |d - d'| <= 127 |d - d'|. q4_0: the same d / 2, except that
// values near -max round to 16 and are clamped to 15: error up to one step, |d|; the fp16 scale
// adds 8 |d - d'|. A few ulps of x cover the fp32 products.
TEST(QTensor, DequantizeErrorBound) {
  const int rows = 33, cols = 4096;
  std::vector<float> w = test_values(rows, cols, 42);
  for (QType t : {QType::q8_0, QType::q4_0}) {
    QTensor q = quantize(w.data(), rows, cols, t);
    std::vector<float> back(w.size());
    dequantize(q, back.data());
    double worst = 0;
    for (size_t b = 0; b < w.size() / 32; ++b) {
      const float* x = &w[b * 32];
      float amax = 0, max = 0;
      for (int j = 0; j < 32; ++j)
        if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
      const float d = t == QType::q8_0 ? amax / 127 : std::fabs(max / -8);
      const float d16 = std::fabs(ggml_fp16_to_fp32(ggml_fp32_to_fp16(d)));
      const double bound = (t == QType::q8_0 ? 0.5 * d + 127.0 * std::fabs(d - d16)
                                             : 1.0 * d + 8.0 * std::fabs(d - d16)) +
                           4e-7 * amax;
      for (int j = 0; j < 32; ++j) {
        const double err = std::fabs(double(x[j]) - back[b * 32 + j]);
        // q4_0's full step applies only to the clamped ones (x / d > 7.5); the rest stay at d/2.
        double bj = bound;
        if (t == QType::q4_0 && x[j] * (-8.0f / (max != 0 ? max : 1)) <= 7.49f)
          bj = 0.5 * d + 8.0 * std::fabs(d - d16) + 4e-7 * amax;
        ASSERT_LE(err, bj) << qtype_name(t) << " block " << b << " elem " << j << " x=" << x[j];
        if (d > 0) worst = std::max(worst, err / d);
      }
    }
    RecordProperty(std::string(qtype_name(t)) + "_worst_err_over_d", std::to_string(worst));
  }
}

// cpu::matmul rounds each 32-block of x to q8_0 with scale d_x = absmax / 127 (fp32), so each
// element moves by at most d_x / 2, and y moves by at most sum_b d_x[b] / 2 * sum_{k in b} |w_k|.
// The fp32 sums add about cols * 2^-24 * sum |x w| on top.
TEST(QTensor, CpuMatmulMatchesReference) {
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (QType t : {QType::q8_0, QType::q4_0}) {
    for (int cols : {32, 96, 256, 4096}) {
      for (int rows : {1, 7, 33}) {
        for (int N : {1, 3, 17, 64}) {
          std::vector<float> w(size_t(rows) * cols), x(size_t(N) * cols);
          for (auto& v : w) v = g(rng) * 0.05f;
          for (auto& v : x) v = g(rng);
          QTensor q = quantize(w.data(), rows, cols, t);
          std::vector<float> wd(w.size());
          dequantize(q, wd.data());
          std::vector<float> y(size_t(N) * rows), yr(size_t(N) * rows);
          ref::matmul(yr.data(), x.data(), q, N);
          for (Isa isa : supported_isas()) {
            cpu::matmul(y.data(), x.data(), q, N, isa);
            for (int n = 0; n < N; ++n) {
              for (int r = 0; r < rows; ++r) {
                double mag = 0;
                double bound = test::activation_rounding_bound(x, wd, n, r, cols, &mag);
                // Prefill-sized N on an AMX CPU takes the bf16 route (qtensor.h states both).
                if (N >= cpu::kBf16PrefillRows && isa == Isa::amx)
                  bound = std::ldexp(1.0, -8) * mag;
                bound = bound * 1.001 + 4.0 * cols * 6e-8 * mag + 1e-30;
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
}

TEST(QTensor, BadInput) {
  std::vector<float> w(40, 1.0f);
  try {
    quantize(w.data(), 1, 40, QType::q8_0);
    FAIL() << "cols % 32 != 0 must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qtype_from_name("q7_0"), Error);
  EXPECT_EQ(qtype_from_name("q4_0"), QType::q4_0);
}

}  // namespace

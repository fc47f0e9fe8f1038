// Block encodings (ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref, bit for bit), decoding,
// and the plain-loop matmul over the decoded weight that the fast kernels are tested against.
#include "kiln/quant/qtensor.h"

#include <cmath>
#include <cstring>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"

namespace kiln::quant {

std::string_view qtype_name(QType t) {
  return t == QType::q8_0 ? "q8_0" : "q4_0";
}

QType qtype_from_name(std::string_view name) {
  if (name == "q8_0" || name == "Q8_0") return QType::q8_0;
  if (name == "q4_0" || name == "Q4_0") return QType::q4_0;
  fail("quant", "unknown quantization type '", name, "': expected q8_0 or q4_0");
}

size_t block_bytes(QType t) {
  return t == QType::q8_0 ? 34 : 18;
}

// One block of 32 values. Note ggml multiplies by id = 1/d (d in fp32, before rounding to fp16)
// rather than dividing by d: the two differ in the last bit, and so can the rounded value.
void quantize_block(const float* x, uint8_t* out, QType type) {
  if (type == QType::q8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t h = f32_to_f16(d);
    std::memcpy(out, &h, 2);
    for (int j = 0; j < kBlock; ++j) out[2 + j] = uint8_t(int8_t(std::roundf(x[j] * id)));
  } else {
    float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign
    for (int j = 0; j < kBlock; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t h = f32_to_f16(d);
    std::memcpy(out, &h, 2);
    for (int j = 0; j < kBlock / 2; ++j) {
      const float x0 = x[j] * id, x1 = x[j + kBlock / 2] * id;
      const uint8_t q0 = uint8_t(std::min(15, int(int8_t(x0 + 8.5f))));
      const uint8_t q1 = uint8_t(std::min(15, int(int8_t(x1 + 8.5f))));
      out[2 + j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void dequantize_block(const uint8_t* in, float* y, QType type) {
  uint16_t h;
  std::memcpy(&h, in, 2);
  const float d = f16_to_f32(h);
  const uint8_t* qs = in + 2;
  if (type == QType::q8_0) {
    for (int j = 0; j < kBlock; ++j) y[j] = float(int8_t(qs[j])) * d;
  } else {
    for (int j = 0; j < kBlock / 2; ++j) {
      y[j] = float(int(qs[j] & 0x0f) - 8) * d;
      y[j + kBlock / 2] = float(int(qs[j] >> 4) - 8) * d;
    }
  }
}

QTensor quantize(const float* w, int rows, int cols, QType type) {
  KILN_CHECK(rows >= 0 && cols >= 0, "quant", "bad shape (", rows, ", ", cols, ")");
  KILN_CHECK(cols % kBlock == 0, "quant", "cannot quantize a (", rows, ", ", cols, ") matrix to ",
             qtype_name(type), ": cols must be a multiple of ", kBlock,
             "; keep this tensor in f32/f16");
  QTensor q;
  q.type = type;
  q.rows = rows;
  q.cols = cols;
  q.data.resize(size_t(rows) * q.row_bytes());
  const int nb = cols / kBlock;
  const size_t bb = block_bytes(type);
  parallel_ranges(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int b = 0; b < nb; ++b)
        quantize_block(w + r * cols + int64_t(b) * kBlock, q.data.data() + (r * nb + b) * bb, type);
  });
  return q;
}

void dequantize(const QTensor& q, float* out) {
  const int nb = q.cols / kBlock;
  const size_t bb = block_bytes(q.type);
  parallel_ranges(q.rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int b = 0; b < nb; ++b)
        dequantize_block(q.data.data() + (r * nb + b) * bb, out + r * q.cols + int64_t(b) * kBlock,
                         q.type);
  });
}

namespace ref {

void matmul(float* y, const float* x, const QTensor& w, int N) {
  std::vector<float> wd(size_t(w.rows) * w.cols);
  dequantize(w, wd.data());
  for (int n = 0; n < N; ++n)
    for (int r = 0; r < w.rows; ++r) {
      double acc = 0;
      for (int k = 0; k < w.cols; ++k)
        acc += double(x[size_t(n) * w.cols + k]) * wd[size_t(r) * w.cols + k];
      y[size_t(n) * w.rows + r] = float(acc);
    }
}

}  // namespace ref
}  // namespace kiln::quant

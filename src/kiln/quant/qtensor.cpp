// Type table, decoding (ggml's dequantize_row_*, bit for bit), the row-wise quantize() over the
// block encoders of kquant_write.cpp, and the plain-loop matmul over the decoded weight that the
// fast kernels are tested against.
#include "kiln/quant/qtensor.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <string>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/quant/block_fields.h"

namespace kiln::quant {

namespace {
struct QTypeInfo {
  QType type;
  std::string_view name;
  uint32_t ggml;
  int elems;
  size_t bytes;
};
constexpr QTypeInfo kQTypes[] = {
    {QType::q8_0, "q8_0", 8, 32, 34},    {QType::q4_0, "q4_0", 2, 32, 18},
    {QType::q4_1, "q4_1", 3, 32, 20},    {QType::q5_0, "q5_0", 6, 32, 22},
    {QType::q5_1, "q5_1", 7, 32, 24},    {QType::q2_k, "q2_k", 10, 256, 84},
    {QType::q3_k, "q3_k", 11, 256, 110}, {QType::q4_k, "q4_k", 12, 256, 144},
    {QType::q5_k, "q5_k", 13, 256, 176}, {QType::q6_k, "q6_k", 14, 256, 210},
    {QType::q8_k, "q8_k", 15, 256, 292},
};
const QTypeInfo& info(QType t) {
  return kQTypes[size_t(t)];
}
}  // namespace

std::string_view qtype_name(QType t) {
  return info(t).name;
}

QType qtype_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (const QTypeInfo& i : kQTypes)
    if (i.name == lower) return i.type;
  fail("quant", "unknown quantization type '", name,
       "': expected q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k or q8_k");
}

size_t block_bytes(QType t) {
  return info(t).bytes;
}

int block_elems(QType t) {
  return info(t).elems;
}

uint32_t ggml_type_id(QType t) {
  return info(t).ggml;
}

bool qtype_from_ggml(uint32_t ggml_type, QType* out) {
  for (const QTypeInfo& i : kQTypes)
    if (i.ggml == ggml_type) {
      *out = i.type;
      return true;
    }
  return false;
}

namespace {

// The 32-value formats. Each computes value = int * d (+ m) in fp32 exactly as ggml does.
void dequantize_small(const uint8_t* in, float* y, QType type) {
  const float d = f16_at(in);
  switch (type) {
    case QType::q8_0:
      for (int j = 0; j < 32; ++j) y[j] = float(int8_t(in[2 + j])) * d;
      break;
    case QType::q4_0:
      for (int j = 0; j < 16; ++j) {
        y[j] = float(int(in[2 + j] & 0x0f) - 8) * d;
        y[j + 16] = float(int(in[2 + j] >> 4) - 8) * d;
      }
      break;
    case QType::q4_1: {
      const float m = f16_at(in + 2);
      for (int j = 0; j < 16; ++j) {
        y[j] = float(in[4 + j] & 0x0f) * d + m;
        y[j + 16] = float(in[4 + j] >> 4) * d + m;
      }
      break;
    }
    case QType::q5_0:
    case QType::q5_1: {
      const bool q51 = type == QType::q5_1;
      const float m = q51 ? f16_at(in + 2) : 0.0f;
      uint32_t qh;
      std::memcpy(&qh, in + (q51 ? 4 : 2), 4);
      const uint8_t* qs = in + (q51 ? 8 : 6);
      for (int j = 0; j < 16; ++j) {
        const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
        const int x0 = (qs[j] & 0x0f) | h0, x1 = (qs[j] >> 4) | h1;
        if (q51) {
          y[j] = float(x0) * d + m;
          y[j + 16] = float(x1) * d + m;
        } else {
          y[j] = float(x0 - 16) * d;
          y[j + 16] = float(x1 - 16) * d;
        }
      }
      break;
    }
    default:
      fail("quant", "internal: QType ", int(type), " is not a 32-value format");
  }
}

void dequantize_q2_k(const uint8_t* in, float* y) {
  const uint8_t* scales = in;
  const uint8_t* q = in + 16;
  const float d = f16_at(in + 80), dmin = f16_at(in + 82);
  int is = 0;
  for (int n = 0; n < 256; n += 128, q += 32)
    for (int shift = 0; shift < 8; shift += 2)
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[is++];
        const float dl = d * float(sc & 0xF), ml = dmin * float(sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * half] >> shift) & 3) - ml;
      }
}

void dequantize_q3_k(const uint8_t* in, float* y) {
  const uint8_t* hm = in;
  const uint8_t* q = in + 32;
  const float d = f16_at(in + 108);
  int8_t scales[16];
  q3_k_scales(in + 96, scales);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < 256; n += 128, q += 32)
    for (int shift = 0; shift < 8; shift += 2, m = uint8_t(m << 1))
      for (int half = 0; half < 2; ++half) {
        const float dl = d * float(scales[is++] - 32);
        for (int l = 16 * half; l < 16 * half + 16; ++l)
          *y++ = dl * float(((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      }
}

// q4_k (qh == nullptr) and q5_k.
void dequantize_q45_k(const uint8_t* in, float* y, bool five) {
  const float d = f16_at(in), dmin = f16_at(in + 2);
  const uint8_t* scales = in + 4;
  const uint8_t* qh = five ? in + 16 : nullptr;
  const uint8_t* ql = in + (five ? 48 : 16);
  uint8_t u1 = 1, u2 = 2;
  for (int is = 0; is < 8; is += 2, ql += 32, u1 = uint8_t(u1 << 2), u2 = uint8_t(u2 << 2)) {
    uint8_t sc, m;
    scale_min_k4(is, scales, &sc, &m);
    const float d1 = d * float(sc), m1 = dmin * float(m);
    scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * float(sc), m2 = dmin * float(m);
    for (int l = 0; l < 32; ++l)
      *y++ = d1 * float((ql[l] & 0xF) + (qh && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l)
      *y++ = d2 * float((ql[l] >> 4) + (qh && (qh[l] & u2) ? 16 : 0)) - m2;
  }
}

void dequantize_q6_k(const uint8_t* in, float* y) {
  const uint8_t* ql = in;
  const uint8_t* qh = in + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(in + 192);
  const float d = f16_at(in + 208);
  for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = int8_t((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = int8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = int8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = int8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * float(sc[is + 0]) * float(q1);
      y[l + 32] = d * float(sc[is + 2]) * float(q2);
      y[l + 64] = d * float(sc[is + 4]) * float(q3);
      y[l + 96] = d * float(sc[is + 6]) * float(q4);
    }
  }
}

}  // namespace

void dequantize_block(const uint8_t* in, float* y, QType type) {
  switch (type) {
    case QType::q2_k:
      return dequantize_q2_k(in, y);
    case QType::q3_k:
      return dequantize_q3_k(in, y);
    case QType::q4_k:
    case QType::q5_k:
      return dequantize_q45_k(in, y, type == QType::q5_k);
    case QType::q6_k:
      return dequantize_q6_k(in, y);
    case QType::q8_k: {
      float d;
      std::memcpy(&d, in, 4);
      for (int j = 0; j < 256; ++j) y[j] = d * float(int8_t(in[4 + j]));
      return;
    }
    default:
      return dequantize_small(in, y, type);
  }
}

QTensor quantize(const float* w, int rows, int cols, QType type) {
  KILN_CHECK(rows >= 0 && cols >= 0, "quant", "bad shape (", rows, ", ", cols, ")");
  KILN_CHECK(can_quantize(type), "quant", "kiln cannot write ", qtype_name(type));
  const int be = block_elems(type);
  KILN_CHECK(cols % be == 0, "quant", "cannot quantize a (", rows, ", ", cols, ") matrix to ",
             qtype_name(type), ": cols must be a multiple of ", be,
             be == 256 ? "; use a 32-value type (q5_0, q5_1, q8_0) or keep this tensor in f16"
                       : "; keep this tensor in f16");
  QTensor q;
  q.type = type;
  q.rows = rows;
  q.cols = cols;
  q.data.resize(size_t(rows) * q.row_bytes());
  const int nb = cols / be;
  const size_t bb = block_bytes(type);
  parallel_ranges(rows, be == 256 ? 2 : 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int b = 0; b < nb; ++b)
        quantize_block(w + r * cols + int64_t(b) * be, q.data.data() + (r * nb + b) * bb, type);
  });
  return q;
}

void dequantize(const QTensor& q, float* out) {
  const int be = block_elems(q.type), nb = q.cols / be;
  const size_t bb = block_bytes(q.type);
  parallel_ranges(q.rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int b = 0; b < nb; ++b)
        dequantize_block(q.data.data() + (r * nb + b) * bb, out + r * q.cols + int64_t(b) * be,
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

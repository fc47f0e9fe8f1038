// Weight-only quantized matrices in GGUF's block layouts, and the matmul inference runs on them.
// A QTensor is a (rows, cols) weight stored row by row in blocks of 32 values along cols:
//   q8_0: { f16 d; int8 qs[32]; }        34 bytes, value = qs[i] * d
//   q4_0: { f16 d; uint8 qs[16]; }       18 bytes, value = ((nibble) - 8) * d, where element i
//         (0 <= i < 16) is the low nibble of qs[i] and element i + 16 its high nibble.
// (ggml's block_q8_0 / block_q4_0; byte-identical encodings are tested against GGUF's definition.)
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace kiln::quant {

enum class QType : uint8_t { q8_0, q4_0 };

std::string_view qtype_name(QType t);          // "q8_0", "q4_0"
QType qtype_from_name(std::string_view name);  // throws Error naming the choices
size_t block_bytes(QType t);                   // 34 or 18
constexpr int kBlock = 32;

struct QTensor {
  QType type = QType::q8_0;
  int rows = 0, cols = 0;     // cols % 32 == 0
  std::vector<uint8_t> data;  // rows * (cols / 32) blocks, row-major
  size_t row_bytes() const { return size_t(cols / kBlock) * block_bytes(type); }
  const uint8_t* row(int r) const { return data.data() + size_t(r) * row_bytes(); }
};

// Quantizes w (rows, cols) with ggml's reference rounding (d = absmax / 127 for q8_0,
// d = max / -8 for q4_0 with the signed max). Throws if cols % 32 != 0.
QTensor quantize(const float* w, int rows, int cols, QType type);
// out (rows, cols) = the dequantized values.
void dequantize(const QTensor& q, float* out);
// One block: 32 floats <-> block_bytes(type) bytes (the row functions above call these).
void quantize_block(const float* x, uint8_t* out, QType type);
void dequantize_block(const uint8_t* in, float* y, QType type);

namespace ref {
// y (N, rows) = x (N, cols) @ dequantize(W)^T, plain loops over the dequantized weight
// (accumulated in double: the oracle).
void matmul(float* y, const float* x, const QTensor& w, int N);
}  // namespace ref

namespace cpu {
// Same contract, fast: x quantized to q8_0 per row, integer dot products (AVX-512 VNNI where
// present), fp32 scales; parallel over rows of W (decode) or over N (prefill).
// Error against ref::matmul: the activation rounding, |y - y_ref| <= sum over blocks b of
// (d_x[b] / 2) * sum_{k in b} |w_k| with d_x[b] = absmax(x in b) / 127, plus fp32 summation.
// From kBf16PrefillRows rows on, when the CPU has AMX, prefill instead dequantizes W to bf16 and
// runs the AMX bf16 GEMM (ops/matmul_bf16.h) — compute-bound work at ~1 TFLOP/s per core instead
// of ~0.05; both x and W are then rounded to bf16: |y - y_ref| <= 2^-8 * sum_k |x_k w_k| plus
// fp32 summation.
constexpr int kBf16PrefillRows = 32;
void matmul(float* y, const float* x, const QTensor& w, int N);
}  // namespace cpu

}  // namespace kiln::quant

// Weight-only quantized matrices in GGUF's block layouts, and the matmul inference runs on them.
// A QTensor is a (rows, cols) weight stored row by row in blocks along cols (ggml-common.h):
//   q8_0: { f16 d; int8 qs[32]; }                          value = qs[i] * d
//   q4_0: { f16 d; u8 qs[16]; }                            value = (nibble - 8) * d, where element
//         i (0 <= i < 16) is the low nibble of qs[i] and element i + 16 its high nibble
//   q4_1: { f16 d, m; u8 qs[16]; }                         value = nibble * d + m
//   q5_0: { f16 d; u8 qh[4]; u8 qs[16]; }                  value = ((nibble | bit i of qh << 4) -
//   16) * d q5_1: { f16 d, m; u8 qh[4]; u8 qs[16]; }               value = (nibble | bit i of qh <<
//   4) * d + m
// and the K-quants, super-blocks of 256 values with sub-block scales (and mins):
//   q2_k: { u8 scales[16]; u8 qs[64]; f16 d, dmin; }       16 x 16, 2 bits, 4-bit scale and min
//   q3_k: { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }  16 x 16, 3 bits, 6-bit scales
//   q4_k: { f16 d, dmin; u8 scales[12]; u8 qs[128]; }      8 x 32, 4 bits, 6-bit scale and min
//   q5_k: { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }  8 x 32, 5 bits
//   q6_k: { u8 ql[128]; u8 qh[64]; int8 scales[16]; f16 d; }  16 x 16, 6 bits, 8-bit scales
//   q8_k: { f32 d; int8 qs[256]; int16 bsums[16]; }        value = qs[i] * d
// Decoding is ggml's dequantize_row_* bit for bit (tests/quant/test_kquants.cpp holds a plain
// transcription of the block definitions). Encoding (kquant_write.cpp) is ggml's reference
// quantizer of every one of them, byte for byte (tests/quant/test_kquant_write.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "kiln/core/cpu_isa.h"

namespace kiln::quant {

enum class QType : uint8_t { q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k };

std::string_view qtype_name(QType t);          // "q8_0", "q4_k", ...
QType qtype_from_name(std::string_view name);  // throws Error naming the choices
size_t block_bytes(QType t);                   // 34, 18, ..., 210
int block_elems(QType t);                      // 32 or 256
uint32_t ggml_type_id(QType t);                // ggml_type: 8, 2, ..., 14
// The QType of a ggml_type id; false for a float or unknown type.
bool qtype_from_ggml(uint32_t ggml_type, QType* out);
// True for the types kiln can write (quantize, quantize_block): all of them.
bool can_quantize(QType t);
constexpr int kBlock = 32;

struct PackedWeight;  // the CPU kernel's layout of a QTensor (qmatmul_cpu.cpp)

struct QTensor {
  QType type = QType::q8_0;
  int rows = 0, cols = 0;     // cols % block_elems(type) == 0
  std::vector<uint8_t> data;  // rows * (cols / block_elems) blocks, row-major
  // The same weights repacked once for cpu::matmul (built on first use, shared by copies).
  mutable std::shared_ptr<const PackedWeight> packed;
  size_t row_bytes() const { return size_t(cols / block_elems(type)) * block_bytes(type); }
  const uint8_t* row(int r) const { return data.data() + size_t(r) * row_bytes(); }
};

// Quantizes w (rows, cols) row by row with ggml's reference quantizers (quantize_row_*_ref: what
// llama-quantize writes without an importance matrix). Throws if cols % block_elems(type) != 0.
QTensor quantize(const float* w, int rows, int cols, QType type);
// out (rows, cols) = the dequantized values.
void dequantize(const QTensor& q, float* out);
// One block: block_elems(type) floats <-> block_bytes(type) bytes (the row functions above call
// these). quantize_block is one pass over the block for the 32-value formats; the K-quants try
// 17 to 22 candidate scales per 16- or 32-value group (q3_k: up to 5 refinement passes), so
// they cost many times q8_0's work per value, as in llama-quantize.
void quantize_block(const float* x, uint8_t* out, QType type);
void dequantize_block(const uint8_t* in, float* y, QType type);

namespace ref {
// y (N, rows) = x (N, cols) @ dequantize(W)^T, plain loops over the dequantized weight
// (accumulated in double: the oracle).
void matmul(float* y, const float* x, const QTensor& w, int N);
}  // namespace ref

namespace cpu {
// Same contract, fast: x quantized to q8_0 per row, integer dot products, fp32 scales; parallel
// over panels of 16 rows of W, each weight vector used for up to 8 rows of x. One kernel per ISA
// tier (core/cpu_isa.h): 16-lane AVX-512 VNNI, 8-lane AVX-VNNI, 8-lane AVX2 (vpmaddubsw), plain
// C++; every tier computes the same integer sums, so results differ only in fp32 summation order.
// Error against ref::matmul: the activation rounding, |y - y_ref| <= sum over blocks b of
// (d_x[b] / 2) * sum_{k in b} |w_k| with d_x[b] = absmax(x in b) / 127, plus fp32 summation.
// From kBf16PrefillRows rows on, on the amx tier, prefill instead dequantizes W to bf16 and
// runs the AMX bf16 GEMM (ops/matmul_bf16.h) — compute-bound work at ~1 TFLOP/s per core instead
// of ~0.05; both x and W are then rounded to bf16: |y - y_ref| <= 2^-8 * sum_k |x_k w_k| plus
// fp32 summation.
constexpr int kBf16PrefillRows = 32;
// On active_isa() (the CPU's best tier, capped by KILN_ISA).
void matmul(float* y, const float* x, const QTensor& w, int N);
// On tier `isa` (an Error if !isa_supported(isa)): the tests run every tier the CPU has.
void matmul(float* y, const float* x, const QTensor& w, int N, Isa isa);
}  // namespace cpu

}  // namespace kiln::quant

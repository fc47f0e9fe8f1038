// NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al. 2023) as bitsandbytes stores it
// (quantize_4bit with quant_type nf4, blocksize 64, compress_statistics): a tensor flattened
// row-major, cut into blocks of 64 values, each value the index of the nearest of the 16 NF4
// levels (kNf4Levels, quantiles of N(0, 1) scaled to [-1, 1]) times the block's absmax; two indices
// per byte, the first in the high nibble. Double quantization stores the block absmaxes in 8
// bits: their mean is subtracted (the offset) and the rest quantized in blocks of 256 to the
// nearest value of bitsandbytes' signed dynamic map (dynamic_map(): create_dynamic_map(signed =
// True), 7 exponent bits) times that block's absmax (fp32). A value is then
//   x = kNf4Levels[code] * (dynamic_map()[scale_code[b]] * nested_absmax[b / 256] + offset)
// with b = its index / 64: 4 + 8/64 + 32/(64*256) = 4.127 bits per value.
// Rounding: nearest level by |x / absmax - level| in fp32, ties to the lower index; an all-zero
// block has absmax 0 and codes of level 0.0. tests/ops/nf4_reference.py is the published
// algorithm written out in PyTorch, the oracle of every byte (tests/ops/test_nf4.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln::ops {

constexpr int kNf4Block = 64;                 // values per absmax
constexpr int kNf4ScaleBlock = 256;           // absmaxes per nested absmax
extern const float kNf4Levels[16];            // bitsandbytes' NF4 table, ascending
const std::array<float, 256>& dynamic_map();  // ascending, as bitsandbytes builds it

struct Nf4Tensor {
  int64_t numel = 0;                 // a multiple of kNf4Block
  std::vector<uint8_t> codes;        // numel / 2: two levels per byte, first in the high nibble
  std::vector<uint8_t> scale_codes;  // numel / 64: each block's absmax, an index into dynamic_map
  std::vector<float> nested_absmax;  // ceil(numel / 64 / 256)
  float offset = 0;                  // the mean of the block absmaxes
  int64_t blocks() const { return numel / kNf4Block; }
  size_t bytes() const {
    return codes.size() + scale_codes.size() + 4 * nested_absmax.size() + sizeof offset;
  }
  float block_absmax(int64_t b) const;  // the double-quantized absmax of block b
};

// Throws if n is not a multiple of kNf4Block.
Nf4Tensor nf4_quantize(const float* x, int64_t n);
// Values [begin, begin + n) of the tensor (begin and n multiples of kNf4Block), dequantized to
// fp32, or to bf16 (the fp32 value rounded to nearest even).
void nf4_dequantize(const Nf4Tensor& q, int64_t begin, int64_t n, float* out);
void nf4_dequantize_bf16(const Nf4Tensor& q, int64_t begin, int64_t n, uint16_t* out);

}  // namespace kiln::ops

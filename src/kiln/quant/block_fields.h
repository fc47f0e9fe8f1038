// The fields of ggml's block layouts that both decoders read (qtensor.cpp's dequantize_block and
// qmatmul_cpu.cpp's repacking): an f16 at a byte offset, and the K-quants' packed 6-bit scales.
#pragma once

#include <cstdint>
#include <cstring>

#include "kiln/core/dtype.h"

namespace kiln::quant {

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// q4_k and q5_k's 6-bit scale and min of sub-block j from the 12 scale bytes q (ggml's
// get_scale_min_k4).
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

// q3_k's 16 6-bit scales (still offset by 32) from its 12 scale bytes, as dequantize_row_q3_K
// unpacks them.
inline void q3_k_scales(const uint8_t* bytes, int8_t out[16]) {
  uint32_t aux[4];
  std::memcpy(aux, bytes, 12);
  const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f, tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
  aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
  aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
  aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
  std::memcpy(out, aux, 16);
}

}  // namespace kiln::quant

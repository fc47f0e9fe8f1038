// Element types and devices. fp32 is what every op computes in today; the others are carried so
// that bf16/fp16 weights, int8/4-bit block formats and CUDA tensors fit the same Tensor later.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln {

enum class DType : uint8_t { f32, f16, bf16, i32, i64, u8, u16, i8, q8_0, q4_0 };
enum class Device : uint8_t { cpu, cuda };

// Bytes per element; for block formats, bytes per block (see block_size).
size_t dtype_size(DType t);
// Elements per block: 1 for plain types, 32 for q8_0/q4_0 (GGUF layout).
int dtype_block(DType t);
std::string_view dtype_name(DType t);
// Parses "f32", "F32", "bf16", ... (safetensors and GGUF spellings). Throws Error if unknown.
DType dtype_from_name(std::string_view name);
std::string_view device_name(Device d);

// bf16 <-> f32: round-to-nearest-even, as PyTorch does.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace kiln

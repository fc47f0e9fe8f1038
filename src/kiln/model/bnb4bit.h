// bitsandbytes 4-bit checkpoints, as Hugging Face transformers saves a model loaded with
// load_in_4bit (the "-bnb-4bit" models): each quantized projection `X.weight` is stored as
//   X.weight                                     U8 (numel / 2, 1)  two 4-bit codes per byte
//   X.weight.absmax                              U8 (blocks)        with double quantization
//                                                F32 (blocks)       without
//   X.weight.nested_absmax                       F32 (ceil(blocks / nested_blocksize))
//   X.weight.nested_quant_map                    F32 (256)          the absmax codes' values
//   X.weight.quant_map                           F32 (16)           the 4-bit codes' values
//   X.weight.quant_state.bitsandbytes__nf4       U8 (bytes)         JSON: quant_type, blocksize,
//                                                shape, dtype, nested_blocksize, nested_offset
// (…__fp4 for quant_type fp4), and config.json carries a quantization_config. kiln writes NF4
// with double quantization (ops/nf4.h: what QLoRA trains over) and reads either 4-bit type, with
// or without double quantization, dequantizing with the file's own maps into the fp32 weights.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kiln/core/tensor.h"

namespace kiln {

class Model;

// Whether the model's parameter `name` is one kiln stores in 4 bits (a layer's projection).
bool bnb4bit_quantizes(const std::string& name, const Shape& shape);

// The tensors that store parameter `name` (numel values) in NF4 with double quantization.
std::vector<std::pair<std::string, Tensor>> bnb4bit_tensors(const std::string& name, const float* w,
                                                            const Shape& shape);
// config.json's quantization_config for what bnb4bit_tensors writes.
nlohmann::json bnb4bit_quantization_config();

// Whether `tensors` hold parameter `name` in bitsandbytes' 4-bit form.
bool is_bnb4bit(const std::map<std::string, Tensor>& tensors, const std::string& name);
// Dequantizes parameter `name` (shape `shape`) into out and erases its tensors from `tensors`.
// Every size, code count and field is checked first: an error names the file, tensor and fix.
void bnb4bit_dequantize(std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape, const std::string& file, float* out);

}  // namespace kiln

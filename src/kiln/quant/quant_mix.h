// What a GGUF file's weights are stored in, per tensor. The float types and q8_0/q4_0 store every
// 2-D weight alike (convert_hf_to_gguf.py's way); the K-quant mixes are llama-quantize's
// (llama.cpp src/llama-quant.cpp, llama_tensor_get_type with no importance matrix and no
// overrides), for a Llama model: each tensor's type chosen as llama-quantize chooses it, in the
// order llama.cpp's loader visits tensors. Source of truth checked by
// tests/quant/test_quant_mix.cpp and bench/kquant_vs_llama_quantize.sh.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/io/gguf.h"

namespace kiln::quant {

// general.file_type (llama_ftype): f32 0, f16 1, q4_0 2, q8_0 7, q2_k 10, q3_k_s 11, q3_k_m 12,
// q3_k_l 13, q4_k_s 14, q4_k_m 15, q5_k_s 16, q5_k_m 17, q6_k 18.
enum class GgufType {
  f32,
  f16,
  q8_0,
  q4_0,
  q2_k,
  q3_k_s,
  q3_k_m,
  q3_k_l,
  q4_k_s,
  q4_k_m,
  q5_k_s,
  q5_k_m,
  q6_k
};
std::string_view gguf_type_name(GgufType t);          // "f32", ..., "q4_k_m"
GgufType gguf_type_from_name(std::string_view name);  // any case; throws naming the choices
uint32_t gguf_file_type(GgufType t);                  // general.file_type
// The GgufType of a general.file_type value; false for one kiln does not write.
bool gguf_type_from_file_type(int64_t file_type, GgufType* out);
// True for the types llama-quantize makes (all but f32 and f16): per-tensor types, llama.cpp's
// file layout.
bool is_llama_quantize_type(GgufType t);

// One tensor of a Llama GGUF: its name (token_embd.weight, blk.3.attn_v.weight, ...), and its
// ggml dims (dims[0] = values per row).
struct MixTensor {
  std::string name;
  std::vector<int64_t> dims;
};

// The Llama model facts llama-quantize's choice reads.
struct MixModel {
  int layers = 0, heads = 0, kv_heads = 0;
};

// Sorts tensors as llama.cpp's loader orders them (weight_name_comparer): tensors outside the
// blocks first, then by block number; by name within each. llama-quantize writes this order and
// counts attn_v / ffn_down layers in it.
void sort_like_llama_cpp(std::vector<MixTensor>& tensors);

// The type of each tensor (in the order given, which must be sort_like_llama_cpp's) under `type`
// (is_llama_quantize_type): f32 for 1-D tensors and norms; otherwise llama_tensor_get_type's
// choice: the output matrix (token_embd when tied) in q6_k (q8_0 under q8_0), attn_v, ffn_down
// and attn_output per mix and layer, then the fallbacks for rows that are not a multiple of 256
// (q2_k/q3_k -> q4_0, q4_k -> q5_0, q5_k -> q5_1, q6_k -> q8_0) or of 32 (f16).
std::vector<gguf::TensorType> llama_quantize_types(GgufType type, const MixModel& m,
                                                   const std::vector<MixTensor>& tensors);

}  // namespace kiln::quant

// Llama models in and out of GGUF, the way llama.cpp's convert_hf_to_gguf.py writes them:
// metadata under "llama.*", the tokenizer under "tokenizer.ggml.*" (byte-level BPE: model "gpt2"),
// tensors under llama.cpp's names (token_embd, blk.N.attn_q, ...), q and k rows permuted from
// Hugging Face's rotate-half RoPE layout to GGUF's interleaved pairs (LlamaModel.permute), norms
// and other 1-D tensors in f32.
//
// A quantized model directory (`kiln quantize`) is config.json + tokenizer.json + model.gguf:
// the GGUF holds the weights (and a copy of the config and tokenizer as GGUF metadata, so the
// file alone also runs in llama.cpp); config.json and tokenizer.json are the source's, verbatim.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "kiln/model/transformer.h"
#include "kiln/quant/qtensor.h"
#include "kiln/quant/quant_mix.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::quant {

// Writes `model` (Llama family only) and its tokenizer (byte-level BPE only) as a GGUF file,
// atomically; a non-empty `chat_template` goes in as tokenizer.chat_template (llama.cpp's key).
// f32/f16 store every 2-D weight in that type, as llama.cpp's converter does. A quantized type
// (q8_0, q4_0, a K-quant mix: quant_mix.h) is the file llama-quantize makes from the f32 export,
// byte for byte: its per-tensor types, tensors in llama.cpp's loader order,
// general.quantization_version and general.file_type last (bench/kquant_vs_llama_quantize.sh).
// Throws naming what cannot be exported.
void export_gguf(const Model& model, const Tokenizer& tok, const std::string& path, GgufType type,
                 const std::string& chat_template = "");

struct GgufModel {
  std::unique_ptr<Model> model;  // fp32 weights (quantized tensors dequantized), HF names
  Tokenizer tokenizer;
  GgufType type = GgufType::f32;  // from general.file_type (f32 for a type kiln does not write)
  std::string file_type;          // llama.cpp's name of general.file_type: "q8_0", "q4_k_m", ...
  // The file's quantized matrices as they are (q/k rows back in HF order), by HF name, when
  // loaded with keep_quantized: the inference engine multiplies with these directly.
  std::map<std::string, QTensor> qweights;
};

// Loads a GGUF file (or a `kiln quantize` directory: its model.gguf, with its tokenizer.json).
// Every metadata value is checked against the tensors it describes; errors name the file, the
// key or tensor, and the fix.
GgufModel load_gguf_model(const std::string& path, bool keep_quantized = true);

// True for a path load_gguf_model takes: a *.gguf file or a directory holding model.gguf.
bool is_gguf_path(const std::string& path);

// `kiln quantize`: model directory -> directory of config.json, tokenizer.json, model.gguf (and
// tokenizer_config.json, with its chat template also in the GGUF, when the model has one).
// The output appears complete or not at all (written beside it, then renamed); an existing
// output is an error.
void quantize_model_dir(const std::string& model_dir, GgufType type, const std::string& out_dir);
// `kiln quantize --type nf4`: the same directory with config.json and model.safetensors in
// bitsandbytes' 4-bit form (model/bnb4bit.h: the projections in NF4, what transformers' 4-bit
// checkpoints hold), loaded by load_model (and so by every command) into fp32 weights.
void quantize_model_dir_nf4(const std::string& model_dir, const std::string& out_dir);

}  // namespace kiln::quant

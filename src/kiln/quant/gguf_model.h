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
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::quant {

// The storage type of a GGUF's 2-D weights (general.file_type: 0, 1, 7, 2).
enum class GgufType { f32, f16, q8_0, q4_0 };
std::string_view gguf_type_name(GgufType t);
GgufType gguf_type_from_name(std::string_view name);  // "f32", "f16", "q8_0", "q4_0"

// Writes `model` (Llama family only) and its tokenizer (byte-level BPE only) as a GGUF file,
// atomically; a non-empty `chat_template` goes in as tokenizer.chat_template (llama.cpp's key). 2-D
// weights whose rows are not a multiple of 32 stay in f16 (q8_0/q4_0) as llama.cpp's converter
// does. Throws naming what cannot be exported.
void export_gguf(const Model& model, const Tokenizer& tok, const std::string& path, GgufType type,
                 const std::string& chat_template = "");

struct GgufModel {
  std::unique_ptr<Model> model;  // fp32 weights (quantized tensors dequantized), HF names
  Tokenizer tokenizer;
  GgufType type = GgufType::f32;  // from general.file_type, for the types kiln writes
  std::string file_type;          // llama.cpp's name of general.file_type: "q8_0", "q4_k_m", ...
  // The file's q8_0/q4_0 matrices as they are (q/k rows back in HF order), by HF name, when
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

}  // namespace kiln::quant

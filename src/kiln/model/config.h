// The model's shape, read from and written as a Hugging Face config.json, so a kiln checkpoint
// directory is a Hugging Face checkpoint (LlamaForCausalLM or GPT2LMHeadModel).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kiln/ops/rope.h"

namespace kiln {

enum class Arch { llama, gpt2 };

struct ModelConfig {
  Arch arch = Arch::llama;
  int vocab_size = 0;
  int hidden = 0;        // C
  int layers = 0;        // L
  int heads = 0;         // H
  int kv_heads = 0;      // K (== H for GPT-2)
  int head_dim = 0;      // D
  int intermediate = 0;  // F
  int max_positions = 0;
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  ops::RopeScaling rope_scaling;
  bool tie_embeddings = false;
  int bos_token_id = -1, eos_token_id = -1;
  float initializer_range = 0.02f;

  // Parses HF config.json keys. Unknown keys are an error when `strict` (a kiln YAML model
  // section: a typo must not silently train the wrong model) and ignored otherwise (HF files
  // carry many keys kiln does not need). `source` names the file or section in errors.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source, bool strict);
  // The HF config.json for this model.
  nlohmann::json to_json() const;
  // Throws Error naming the key if the shape is inconsistent (heads not dividing hidden, ...).
  void validate(const std::string& source) const;
  int64_t num_params() const;
};

ModelConfig load_model_config(const std::string& path);  // reads config.json

}  // namespace kiln

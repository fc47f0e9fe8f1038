// The model's shape, read from and written as a Hugging Face config.json, so a kiln checkpoint
// directory is a Hugging Face checkpoint (LlamaForCausalLM, MixtralForCausalLM or
// GPT2LMHeadModel).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kiln/ops/rope.h"

namespace kiln {

enum class Arch { llama, gpt2 };

// Mixture-of-Experts (Mixtral: a Llama whose MLP is `experts` SwiGLU experts, each token routed
// to `experts_per_tok` of them by a linear router). experts == 0: a dense model.
struct MoeConfig {
  int experts = 0;                    // num_local_experts (E)
  int experts_per_tok = 0;            // num_experts_per_tok (k)
  float aux_loss_coef = 0.001f;       // router_aux_loss_coef (Switch's load-balancing loss)
  bool output_router_logits = false;  // HF: the auxiliary losses join the training loss
  float z_loss_coef = 0.0f;           // router_z_loss_coef (kiln; ST-MoE's router z-loss)
  float capacity_factor = 0.0f;       // moe_capacity_factor (kiln; Megatron's): 0 = dropless
  bool enabled() const { return experts > 0; }
};

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
  MoeConfig moe;  // Llama family only

  // Parses HF config.json keys. Unknown keys are an error when `strict` (a kiln YAML model
  // section: a typo must not silently train the wrong model) and ignored otherwise (HF files
  // carry many keys kiln does not need). `source` names the file or section in errors.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source, bool strict);
  // The HF config.json for this model.
  nlohmann::json to_json() const;
  // Throws Error naming the key if the shape is inconsistent (heads not dividing hidden, ...).
  void validate(const std::string& source) const;
  int64_t num_params() const;
  // Parameters one token's forward uses: num_params() less the experts it is not routed to.
  int64_t active_params() const;
};

ModelConfig load_model_config(const std::string& path);  // reads config.json

}  // namespace kiln

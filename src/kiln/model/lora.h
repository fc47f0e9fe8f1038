// LoRA adapters in Hugging Face PEFT's format, and merging one into a model.
// A PEFT adapter directory holds adapter_config.json (peft_type "LORA", r, lora_alpha,
// use_rslora, target_modules, ...) and adapter_model.safetensors with, per adapted linear layer,
//   base_model.model.<base weight name without ".weight">.lora_A.weight   (r, in)
//   base_model.model.<base weight name without ".weight">.lora_B.weight   (out, r)
// The adapted layer computes W x + s B A x with s = lora_alpha / r (use_rslora: lora_alpha / √r),
// so the merged weight is W + s B A ((in, out) Conv1D weights, GPT-2's: W + s (B A)^T).
// Loading checks every tensor against the base model (names, shapes, one rank) and names what
// disagrees; nothing is changed until everything has been checked.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/transformer.h"

namespace kiln {

struct LoraConfig {
  int r = 8;
  float alpha = 8;
  bool rslora = false;
  float dropout = 0;
  std::vector<std::string> target_modules;  // q_proj, v_proj, ... as PEFT writes them
  std::string base_model;                   // base_model_name_or_path (informative)
  float scaling() const;
};

struct LoraLayer {
  std::string weight;  // the base weight's name, e.g. model.layers.0.self_attn.q_proj.weight
  Tensor a, b;         // (r, in), (out, r), fp32
};

struct LoraAdapter {
  LoraConfig config;
  std::vector<LoraLayer> layers;  // in the base model's parameter order
};

// Reads a PEFT adapter directory and checks it against `base`.
LoraAdapter load_lora_adapter(const std::string& dir, const Model& base);
// Writes adapter_config.json and adapter_model.safetensors (atomically) in PEFT's format.
void save_lora_adapter(const LoraAdapter& adapter, const std::string& dir);
// W += s B A for every adapted layer of `model` (which must be the base the adapter was checked
// against, or one with the same layout).
void merge_lora(Model& model, const LoraAdapter& adapter);

}  // namespace kiln

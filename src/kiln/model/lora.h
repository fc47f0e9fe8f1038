// LoRA adapters in Hugging Face PEFT's format, and merging one into a model.
// A PEFT adapter directory holds adapter_config.json (peft_type "LORA", r, lora_alpha,
// use_rslora, target_modules, ...) and adapter_model.safetensors with, per adapted linear layer,
//   base_model.model.<base weight name without ".weight">.lora_A.weight   (r, in)
//   base_model.model.<base weight name without ".weight">.lora_B.weight   (out, r)
// The adapted layer computes W x + s B A x with s = lora_alpha / r (use_rslora: lora_alpha / √r),
// so the merged weight is W + s B A ((in, out) Conv1D weights, GPT-2's: W + s (B A)^T).
// Loading checks every tensor against the base model (names, shapes, one rank) and names what
// disagrees; nothing is changed until everything has been checked. LoraWeights is the trainable
// form (kiln finetune, method: lora): TrainState adds its products to the frozen base's GEMMs.
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

// Where an adapted projection's output goes: one of the layer's fused GEMMs (Llama's q|k|v and
// gate|up are one GEMM each, GPT-2's c_attn is one projection), at columns [col0, col0 + out).
enum class LoraSite { qkv, o, up, down };

struct LoraSlot {
  LoraSite site;
  int col0, in, out;
  int64_t a, b;        // offsets of A (r, in) and B (out, r) in LoraWeights' flat buffer
  std::string weight;  // the base weight's name
};

// Every adapted projection's A and B in one flat fp32 buffer (so the optimizer, clipping and
// checkpoints see one array, as for a Model), in the base's parameter order, named as PEFT names
// them. Which projections: PEFT's matching of cfg.target_modules (a module is adapted when its
// name equals a target or ends with "." + target; "all-linear" is every linear layer but the LM
// head; none given: PEFT's defaults, q_proj and v_proj for Llama, c_attn for GPT-2).
class LoraWeights {
 public:
  LoraWeights(const Model& base, LoraConfig cfg);
  // PEFT's initialisation: A ~ kaiming_uniform(a = √5), which is U(-1/√in, 1/√in), B = 0, so the
  // adapted model starts as the base.
  void init(uint64_t seed);
  // The values of a loaded adapter (load_lora_adapter against the same base); its r and
  // projections must be this layout's (alpha, dropout and rsLoRA stay this config's).
  void assign(const LoraAdapter& ad, const std::string& source);
  LoraAdapter adapter() const;  // a copy, for save_lora_adapter and merge_lora

  const LoraConfig& config() const { return cfg_; }
  const std::vector<ParamInfo>& params() const { return params_; }  // PEFT names, 2-D, decay
  int64_t num_params() const { return weights_.numel(); }
  Tensor& weights() { return weights_; }
  const Tensor& weights() const { return weights_; }
  // The adapted projections of the base's layer `layer` (0-based within the base), in site order.
  const std::vector<LoraSlot>& slots(int layer) const { return slots_[size_t(layer)]; }

 private:
  LoraConfig cfg_;
  std::vector<std::vector<LoraSlot>> slots_;
  std::vector<ParamInfo> params_;
  Tensor weights_;
};

// Reads a PEFT adapter directory (or a LoRA run directory: its newest checkpoint) and checks it
// against `base`.
LoraAdapter load_lora_adapter(const std::string& dir, const Model& base);
// Writes adapter_config.json and adapter_model.safetensors (atomically) in PEFT's format.
void save_lora_adapter(const LoraAdapter& adapter, const std::string& dir);
// W += s B A for every adapted layer of `model` (which must be the base the adapter was checked
// against, or one with the same layout).
void merge_lora(Model& model, const LoraAdapter& adapter);

}  // namespace kiln

// Which part of the model one rank holds: a pipeline stage's run of consecutive layers, plus the
// token (and GPT-2 position) embedding on the first stage and the final norm and LM head on the
// last; and under expert parallelism, of each Mixture-of-Experts layer, a run of its experts (the
// router and everything else whole). A Model built for a part holds only those parameters, under
// their Hugging Face names with global layer and expert indices, so a part's tensors are named
// exactly as in the full checkpoint.
#pragma once

#include <cstdint>

#include "kiln/model/config.h"

namespace kiln {

class Model;

struct PipelineStage {
  int first_layer = 0;  // global index of the stage's first layer
  int num_layers = 0;
  bool has_embedding = true;  // embed_tokens / wte (+ wpe)
  bool has_head = true;       // final norm + lm_head; with tied embeddings also embed_tokens
  int first_expert = 0;       // MoE: the experts [first_expert, first_expert + num_experts) ...
  int num_experts = -1;       // ... of each layer; -1: all of them
  bool operator==(const PipelineStage&) const = default;
  // Whether the stage holds the token embedding: a tied LM head is that matrix, so the last stage
  // holds its own copy (kept equal to the first stage's by summing their gradients of it).
  bool holds_token_embedding(bool tied) const { return has_embedding || (has_head && tied); }
};

// The whole model as one stage.
PipelineStage full_model_stage(const ModelConfig& cfg);

// Stage `stage` of `stages`: consecutive layers, an even split with the remainder on the early
// stages (10 layers over 4 stages: 3, 3, 2, 2). Throws naming the fix when stages > layers.
PipelineStage pipeline_stage(const ModelConfig& cfg, int stages, int stage);

// The whole model (or stage) with part `part` of `parts` of each MoE layer's experts: expert
// parallelism's split (contiguous, equal runs). Throws naming the fix when parts does not divide
// the experts.
PipelineStage expert_part(const ModelConfig& cfg, PipelineStage stage, int parts, int part);

// Copies every parameter `from` holds that `to` also holds (matched by name) from the flat buffer
// `src` (laid out as `from`) into `dst` (laid out as `to`). Works for weights, gradients and
// optimizer moments alike: full model -> stage scatters, stage -> full model gathers.
void copy_shared_params(const Model& from, const float* src, const Model& to, float* dst);

}  // namespace kiln

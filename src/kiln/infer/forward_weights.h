// The weights an inference forward pass runs, for either family: norms, biases and embeddings
// fp32 (pointing into Model::weights(), so the model must outlive them); projections fp32 in the
// family's layout or quantized (q8_0/q4_0, always (OUT, IN) rows), behind LinearWeight.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/infer/linear_weight.h"
#include "kiln/model/transformer.h"

namespace kiln {

struct LayerWeights {
  const float* ln1 = nullptr;    // (C)
  const float* ln1_b = nullptr;  // (C) GPT-2 only
  LinearWeight qkv;              // C -> (H+2K)*D: q|k|v
  LinearWeight o;                // H*D -> C
  const float* ln2 = nullptr;    // (C)
  const float* ln2_b = nullptr;  // (C) GPT-2 only
  LinearWeight up;               // C -> 2F (Llama gate|up) or F (GPT-2); dense only
  LinearWeight down;             // F -> C; dense only
  // Mixtral: the router (E, C) fp32, and each expert's w1|w3 (C -> 2F) and w2 (F -> C).
  const float* router = nullptr;
  std::vector<LinearWeight> expert_up, expert_down;
};

struct ForwardWeights {
  const float* embed = nullptr;      // (V, C)
  const float* pos_embed = nullptr;  // (maxT, C) GPT-2's learned positions
  const float* norm_f = nullptr;     // (C)
  const float* norm_f_b = nullptr;   // (C) GPT-2 only
  LinearWeight lm_head;              // C -> V, (V, C) rows (== embed when tied)
  std::vector<LayerWeights> layers;
  std::vector<std::shared_ptr<const quant::QTensor>> owned;  // fused quantized projections
};

// fp32 weights pointing into model.weights().
ForwardWeights fp32_weights(const Model& model);
// The same, with each projection whose parts are all in `qweights` (by HF name, e.g. a GGUF's
// q8_0/q4_0 tensors from quant::load_gguf_model) quantized: q|k|v and gate|up rows are fused
// into one QTensor each (rows are independent, so fusing is concatenation). A quantized matrix
// is (OUT, IN) rows for either family (for GPT-2, the transpose of its Conv1D weight).
ForwardWeights quantized_weights(const Model& model,
                                 const std::map<std::string, quant::QTensor>& qweights);

}  // namespace kiln

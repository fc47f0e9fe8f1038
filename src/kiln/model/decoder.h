// Incremental decoding for one sequence with a contiguous KV cache: feed the prompt, then one
// token at a time; each call returns the logits after the last token fed. The batched engine with
// a paged cache lives in infer/; this is the simple path and its oracle.
#pragma once

#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/transformer.h"

namespace kiln {

class Decoder {
 public:
  // Cache for up to max_len positions (at most the model's max_position_embeddings).
  Decoder(const Model& model, int max_len);

  // Runs `tokens` at positions pos()..pos()+n-1; returns the logits (V) after the last one.
  // Throws Error when the context would exceed max_len.
  const std::vector<float>& feed(const std::vector<int>& tokens);
  int pos() const { return pos_; }
  int max_len() const { return max_len_; }
  void reset() { pos_ = 0; }

 private:
  // A Mixtral layer's MLP for n rows, token by token: its router's softmax, the k most probable
  // experts renormalised, each expert's SwiGLU on the one row. out (n, C).
  void moe_mlp(float* out, const float* ln, const LayerParams& p, int n) const;
  const Model& model_;
  int max_len_, pos_ = 0;
  Tensor k_cache_, v_cache_;    // (L, max_len, K*D)
  Tensor rope_cos_, rope_sin_;  // (max_len, D/2)
  std::vector<float> logits_;
};

}  // namespace kiln

// The decoder-only transformer, Llama and GPT-2 families, with explicit forward and backward.
// All parameters live in one flat fp32 buffer (so the optimizer, clipping and checkpoints see one
// array) and are named exactly as in Hugging Face checkpoints. Projections that one GEMM can do
// together are laid out back to back: q_proj|k_proj|v_proj and gate_proj|up_proj.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/config.h"
#include "kiln/model/mixed_linear.h"
#include "kiln/model/precision.h"

namespace kiln {

struct ParamInfo {
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape shape;
  int64_t offset;  // in floats, into the flat buffer
  bool decay;      // gets weight decay (2-D weights other than embeddings)
  int64_t numel() const { return shape_numel(shape); }
};

// The parameters of a model with this config, in flat-buffer order (what Model holds).
std::vector<ParamInfo> param_layout(const ModelConfig& cfg);

// Pointers into the flat parameter (or gradient) buffer for one layer. Null when absent.
struct LayerParams {
  float* ln1_w;   // (C)      input_layernorm / ln_1
  float* ln1_b;   // (C)      GPT-2 only
  float* qkv_w;   // ((H+2K)*D, C) Llama (q|k|v rows) / (C, 3C) GPT-2 c_attn (Conv1D)
  float* qkv_b;   // (3C)     GPT-2 only
  float* o_w;     // (C, H*D) Llama / (C, C) GPT-2 c_proj (Conv1D)
  float* o_b;     // (C)      GPT-2 only
  float* ln2_w;   // (C)
  float* ln2_b;   // (C)      GPT-2 only
  float* up_w;    // (2F, C) Llama gate|up / (C, F) GPT-2 c_fc (Conv1D)
  float* up_b;    // (F)      GPT-2 only
  float* down_w;  // (C, F) Llama / (F, C) GPT-2 c_proj (Conv1D)
  float* down_b;  // (C)      GPT-2 only
};

struct ModelParams {
  float* wte;      // (V, C)
  float* wpe;      // (maxT, C) GPT-2 only
  float* lnf_w;    // (C)
  float* lnf_b;    // (C) GPT-2 only
  float* lm_head;  // (V, C); == wte when tied
  std::vector<LayerParams> layers;
};

class Model {
 public:
  explicit Model(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& param(const std::string& name) const;  // throws naming the parameter
  int64_t num_params() const { return weights_.numel(); }

  Tensor& weights() { return weights_; }  // (P) flat
  const Tensor& weights() const { return weights_; }
  // Tensor view of one parameter inside `flat` (weights or a same-shaped gradient buffer).
  Tensor param_view(const ParamInfo& p, const Tensor& flat) const;

  // GPT-2 style init: N(0, initializer_range), residual projections scaled by 1/sqrt(2L), norms
  // at 1, biases at 0. Depends only on the seed.
  void init_weights(uint64_t seed);

  // Pointers for `flat` (the weights, or a gradient buffer laid out the same way).
  ModelParams bind(float* flat) const;

 private:
  ModelConfig cfg_;
  // Named pointers by HF name lookups (slow: string compares), run once for the layout.
  ModelParams locate(float* flat) const;

  std::vector<ParamInfo> params_;
  Tensor weights_;
  ModelParams layout_;                  // locate() of the weights at construction ...
  const float* layout_base_ = nullptr;  // ... and the base it was taken against
};

// Activations and scratch for training on (B, T). Sized once; reused every step. With
// recomputation, the layers that recompute keep only what their mode needs (full: the layer
// input; selective: all but the attention output and log-sum-exp) and rebuild the rest in backward
// into shared scratch, computing bit for bit what the forward computed. Under tensor parallelism
// (TrainOptions::tp) the model is this rank's shard and every step is collective over tp.
class TrainState {
 public:
  TrainState(const Model& model, int B, int T, TrainOptions opt = {});
  int B() const { return B_; }
  int T() const { return T_; }
  const TrainOptions& options() const { return opt_; }

  // Forward pass; when `targets` is given, returns the mean cross-entropy over targets >= 0.
  // With `grads` non-null, also runs the backward pass into `grads` (+=, same layout as the
  // weights), the loss scaled by `grad_scale` (1/micro-batches for gradient accumulation, times
  // the loss scale in fp16). ids, targets: (B, T). Fused because the LM head computes its
  // gradient chunk by chunk. Call refresh_weights() after every change of the weights.
  double step(const Model& model, const int* ids, const int* targets, float* grads,
              float grad_scale = 1.0f);
  // Rounds the weights into the precision's low-precision copy (no-op in fp32).
  void refresh_weights(const Model& model) { lin_.refresh(model.weights()); }
  // Per-token losses of the last step (B*T); 0 where the target was ignored.
  const std::vector<float>& token_losses() const { return losses_; }
  int64_t counted_tokens() const { return counted_; }
  // Final-norm output of the last forward (B*T, C): logits = final_hidden @ lm_head^T.
  const Tensor& final_hidden() const { return lnf_; }
  // Bytes held by activations, scratch and low-precision weight copies.
  size_t bytes() const;

 private:
  struct LayerActs {
    Tensor x_in, ln1, mean1, rstd1, qkv, att, lse, x_mid, ln2, mean2, rstd2, up, act;
  };
  void alloc_layer(const ModelConfig& c, LayerActs& a, bool input, bool body, bool core);
  // Which storage layer l's activations live in: its own, or the shared recompute scratch.
  Recompute mode(int l) const;
  void forward_layer(const Model& model, const LayerParams& p, LayerActs& a, float* x_next);
  void backward_layer(const Model& model, const LayerParams& p, const LayerParams& gp,
                      LayerActs& a);
  void forward(const Model& model, const ModelParams& w, const int* ids);
  void backward(const Model& model, const ModelParams& w, const ModelParams& g, const int* ids);

  // Tensor parallelism (Megatron's g and f). sum_rows: the sum over tp of a row-parallel GEMM's
  // partial output (N,C), as this rank's rows of the residual stream: in place (rows == partial)
  // or, with sequence parallelism, reduce-scattered into rows (Ns,C). gather_rows: the residual
  // rows as the (N,C) input of a column-parallel GEMM: full == rows, or all-gathered into full.
  // Without tensor parallelism both do nothing.
  void sum_rows(float* partial, float* rows);
  void gather_rows(const float* rows, float* full);
  // Backward with sequence parallelism: the replicated norms (and GPT-2's positions) saw only this
  // rank's rows, so their gradients are collected aside and summed over tp.
  void backward_sequence_parallel(const Model& model, const ModelParams& w, ModelParams g,
                                  const int* ids);

  int B_, T_, C_;
  bool tp_ = false, sp_ = false;  // tensor / sequence parallelism (TrainOptions::tp)
  int Ns_ = 0;                    // residual-stream rows here: B*T, or B*T/tp with sp_ ...
  int row0_ = 0;                  // ... starting at this row of the B*T
  // Sequence-parallel scratch: gathered rows or partial sums (N,C), this rank's norm output and
  // its gradient (Ns,C), and the replicated parameters' gradients set aside.
  Tensor full_, norm_s_, dln_s_, sp_grads_;
  TrainOptions opt_;
  MixedLinear lin_;
  std::vector<LayerActs> acts_;
  LayerActs scratch_;  // the recomputing layers' activations, rebuilt one layer at a time
  Tensor x_out_, lnf_, meanf_, rstdf_, dlnf_;
  Tensor dres_, dln_, datt_, dqkv_, dup_, dact_;
  Tensor rope_cos_, rope_sin_;
  std::vector<int> pos_;
  std::vector<float> losses_;
  int64_t counted_ = 0;
};

}  // namespace kiln

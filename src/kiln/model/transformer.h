// The decoder-only transformer, Llama and GPT-2 families, with explicit forward and backward.
// All parameters live in one flat fp32 buffer (so the optimizer, clipping and checkpoints see one
// array) and are named exactly as in Hugging Face checkpoints. Projections that one GEMM can do
// together are laid out back to back: q_proj|k_proj|v_proj and gate_proj|up_proj.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/model/config.h"
#include "kiln/model/mixed_linear.h"
#include "kiln/model/moe.h"
#include "kiln/model/pipeline_stage.h"
#include "kiln/model/precision.h"

namespace kiln {

namespace dist {
class Comm;
}
class LoraWeights;
class Nf4Base;
enum class LoraSite;
struct LoraScratch;
struct LoraTerm;

struct ParamInfo {
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  Shape shape;
  int64_t offset;  // in floats, into the flat buffer
  bool decay;      // gets weight decay (2-D weights other than embeddings)
  int64_t numel() const { return shape_numel(shape); }
};

// Pointers into the flat parameter (or gradient) buffer for one layer. Null when absent.
struct LayerParams {
  float* ln1_w;     // (C)      input_layernorm / ln_1
  float* ln1_b;     // (C)      GPT-2 only
  float* qkv_w;     // ((H+2K)*D, C) Llama (q|k|v rows) / (C, 3C) GPT-2 c_attn (Conv1D)
  float* qkv_b;     // (3C)     GPT-2 only
  float* o_w;       // (C, H*D) Llama / (C, C) GPT-2 c_proj (Conv1D)
  float* o_b;       // (C)      GPT-2 only
  float* ln2_w;     // (C)
  float* ln2_b;     // (C)      GPT-2 only
  float* up_w;      // (2F, C) Llama gate|up / (C, F) GPT-2 c_fc (Conv1D) / (E, 2F, C) MoE w1|w3
  float* up_b;      // (F)      GPT-2 only
  float* down_w;    // (C, F) Llama / (F, C) GPT-2 c_proj (Conv1D) / (E, C, F) MoE w2
  float* down_b;    // (C)      GPT-2 only
  float* router_w;  // (E, C)  MoE only: block_sparse_moe.gate
};

struct ModelParams {
  float* wte;      // (V, C)
  float* wpe;      // (maxT, C) GPT-2 only
  float* lnf_w;    // (C)
  float* lnf_b;    // (C) GPT-2 only
  float* lm_head;  // (V, C); == wte when tied
  // The model's (or pipeline stage's) layers: layers[i] is global layer stage().first_layer + i.
  std::vector<LayerParams> layers;
};

// Calls f(float*&) on every pointer of m in one fixed order (the same for every ModelParams of a
// model), so code can map pointers between buffers without naming each field.
template <class F>
void for_each_pointer(ModelParams& m, F&& f) {
  for (float** p : {&m.wte, &m.wpe, &m.lnf_w, &m.lnf_b, &m.lm_head}) f(*p);
  for (LayerParams& L : m.layers)
    for (float** p : {&L.ln1_w, &L.ln1_b, &L.qkv_w, &L.qkv_b, &L.o_w, &L.o_b, &L.ln2_w, &L.ln2_b,
                      &L.up_w, &L.up_b, &L.down_w, &L.down_b, &L.router_w})
      f(*p);
}

// Whether `name` is the token embedding (Llama's embed_tokens, GPT-2's wte).
inline bool is_token_embedding(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "transformer.wte.weight";
}

// Whether a parameter is a layer's projection weight (q/k/v/o, gate/up/down; GPT-2's c_attn,
// c_proj, c_fc): 2-D and inside a layer, where the norms are 1-D. What NF4 (QLoRA, bitsandbytes'
// 4-bit checkpoints) quantizes; the embeddings and the LM head stay as they are.
inline bool is_projection_weight(const std::string& name, const Shape& shape) {
  const bool in_layer = name.starts_with("model.layers.") || name.starts_with("transformer.h.");
  return in_layer && shape.size() == 2 && name.ends_with(".weight");
}

// The parameters a model with this config holds (all of them, or one pipeline stage's), in
// flat-buffer order. A Mixtral layer holds its router, then every expert's w1|w3 (gate|up: one
// GEMM per expert) back to back, then every expert's w2, so expert e's weights are
// up_w + e*2F*C and down_w + e*C*F.
std::vector<ParamInfo> param_layout(const ModelConfig& cfg, const PipelineStage& stage);
std::vector<ParamInfo> param_layout(const ModelConfig& cfg);

class Model {
 public:
  explicit Model(const ModelConfig& cfg) : Model(cfg, full_model_stage(cfg)) {}
  // Only the parameters of one pipeline stage; absent ones bind to null.
  Model(const ModelConfig& cfg, const PipelineStage& stage);

  const ModelConfig& config() const { return cfg_; }  // the whole model's shape
  const PipelineStage& stage() const { return stage_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& param(const std::string& name) const;  // throws naming the parameter
  int64_t num_params() const { return weights_.numel(); }

  Tensor& weights() { return weights_; }  // (P) flat
  const Tensor& weights() const { return weights_; }
  // Tensor view of one parameter inside `flat` (weights or a same-shaped gradient buffer).
  Tensor param_view(const ParamInfo& p, const Tensor& flat) const;

  // GPT-2 style init: N(0, initializer_range), residual projections scaled by 1/sqrt(2L), norms
  // at 1, biases at 0. Depends only on the seed (and the stage: to start a stage as the whole
  // model starts, initialize the whole model and copy_shared_params into the stage).
  void init_weights(uint64_t seed);

  // Pointers for `flat` (the weights, or a gradient buffer laid out the same way).
  ModelParams bind(float* flat) const;

 private:
  ModelConfig cfg_;
  PipelineStage stage_;
  // Named pointers by HF name lookups (slow: string compares), run once for the layout.
  ModelParams locate(float* flat) const;

  std::vector<ParamInfo> params_;
  Tensor weights_;
  ModelParams layout_;                  // locate() of the weights at construction ...
  const float* layout_base_ = nullptr;  // ... and the base it was taken against
};

// Per-unit callbacks into a training step, for distributed training (train/zero.h implements
// them). Units: the layers 0..L-1, kEmbedding (wte, wpe) and kHead (final norm, lm_head). bind()
// points the unit's entries of w (and of g, for backward) at its weights and gradients, e.g. at
// just-gathered shards; done() says the step is through with them: after forward its weights are
// not read again, after backward its gradients are final. The head is bound once for forward and
// backward (the LM head's gradient comes with its forward); the embedding's backward reads no
// weights.
class StepHooks {
 public:
  static constexpr int kEmbedding = -1, kHead = -2;
  virtual ~StepHooks() = default;
  virtual void bind(int unit, bool backward, ModelParams& w, ModelParams& g) = 0;
  virtual void done(int unit, bool backward) = 0;
};

// How a TrainState computes: precision, recomputation, tensor and sequence parallelism.
struct TrainOptions {
  Precision precision = Precision::fp32;
  Recompute recompute = Recompute::none;
  int recompute_layers = -1;  // how many layers (from the first) recompute; -1 = all
  // Tensor parallelism (model/tensor_parallel.h): the model is this rank's shard and `tp` its
  // group (null or size 1: none). With sequence_parallel, the norms and the residual stream hold
  // this rank's 1/tp of the B*T rows. The shard's vocabulary starts at row vocab_begin of
  // vocab_total (0: the model's own vocabulary).
  dist::Comm* tp = nullptr;
  bool sequence_parallel = false;
  int vocab_begin = 0, vocab_total = 0;
  // LoRA (model/lora.h): the base model is frozen and the adapter trains. step()'s `grads` is
  // then the adapter's gradient (LoraWeights' layout): no gradient of a base weight is computed
  // or stored, and the frozen weights' gradient GEMMs are skipped. Whole models only (no tp).
  const LoraWeights* lora = nullptr;
  // QLoRA (with lora): the base's linear weights are these NF4 tensors, dequantized for each GEMM
  // at the precision (bf16 or fp32); the flat buffer's copies of them are not read.
  const Nf4Base* nf4 = nullptr;
  // Expert parallelism: the model holds the experts of its part (PipelineStage::first_expert..)
  // and `ep` (its ranks' parts in order) is the group its tokens are dispatched over: each MoE
  // layer sends every routed row to the rank owning its expert and gets the output back
  // (Comm::all_to_all_v). Null or size 1: the model holds every expert.
  dist::Comm* ep = nullptr;
};

// Activations and scratch for training on (B, T). Sized once; reused every step. With
// recomputation, the layers that recompute keep only what their mode needs (full: the layer
// input; selective: all but the attention output and log-sum-exp) and rebuild the rest in backward
// into shared scratch, computing bit for bit what the forward computed. Under tensor parallelism
// (TrainOptions::tp) the model is this rank's shard and every step is collective over tp.
class TrainState {
 public:
  TrainState(const Model& model, int B, int T, TrainOptions opt = {});
  ~TrainState();
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
  // The same step with every unit's weights and gradients placed by `hooks`; backward (into
  // what hooks bind) when `backward` and targets are given.
  double step(const Model& model, const int* ids, const int* targets, StepHooks& hooks,
              bool backward, float grad_scale = 1.0f);
  // step() in two halves, for a pipeline stage (a Model built for a PipelineStage; step() is
  // forward_stage then backward_stage). forward_stage runs from ids on the stage with the
  // embedding, else from `in` (B*T, C), the previous stage's output; the last stage, given
  // targets, also computes the loss (returned; 0 elsewhere) and, given grads, the LM head's
  // gradient. backward_stage adds the rest of the gradient into grads, starting from `dout`
  // (B*T, C), the gradient of this stage's output (null on the last stage), and returns the
  // gradient of the stage's input (B*T, C; null on the first stage), valid until the next
  // forward_stage or backward_stage (the last stage's forward_stage already writes the buffer).
  double forward_stage(const Model& model, const int* ids, const float* in, const int* targets,
                       float* grads, float grad_scale = 1.0f);
  const float* backward_stage(const Model& model, const int* ids, const float* dout, float* grads);
  // Rows of the residual stream this rank holds: B*T, or B*T/tp under sequence parallelism
  // (then a stage's input, output and their gradients are (rows, C), not (B*T, C)).
  int residual_rows() const { return Ns_; }
  // The stage's output of the last forward_stage (B*T, C): the next stage's input.
  const float* stage_output() const { return x_out_.f32(); }
  // LoRA dropout: the masks of the training steps that follow are drawn from this seed (the
  // same seed, the same masks, so a resumed run repeats them).
  void set_lora_seed(uint64_t seed) { lora_seed_ = seed; }
  // Packed rows (several sequences per row, as SFT packing makes them): each token's position in
  // its sequence, (B,T), for the steps that follow; positions restart at 0 where a sequence
  // starts, RoPE / learned positions use them and attention stays within each sequence
  // (ops/attention.h), so a packed batch computes what its sequences would one by one. Null: one
  // sequence per row. Throws on positions that do not count up from 0.
  void set_positions(const int* positions);
  // Rounds the weights into the precision's low-precision copy (no-op in fp32).
  void refresh_weights(const Model& model) { lin_.refresh(model.weights()); }
  // Per-token losses of the last step (B*T); 0 where the target was ignored.
  const std::vector<float>& token_losses() const { return losses_; }
  int64_t counted_tokens() const { return counted_; }
  // Final-norm output of the last forward (B*T, C): logits = final_hidden @ lm_head^T.
  const Tensor& final_hidden() const { return lnf_; }
  // A Mixture-of-Experts model's routing over the last forward (its auxiliary losses, per-expert
  // token fractions, dropped pairs); null for a dense model.
  const MoeStats* moe_stats() const { return moe_ ? &moe_stats_ : nullptr; }
  // Bytes held by activations, scratch and low-precision weight copies.
  size_t bytes() const;
  // Bytes this rank sent in tensor-parallel collectives since the last reset (ring costs).
  int64_t comm_bytes() const { return comm_bytes_; }
  void reset_comm_bytes() { comm_bytes_ = 0; }

 private:
  struct LayerActs {
    Tensor x_in, ln1, mean1, rstd1, qkv, att, lse, x_mid, ln2, mean2, rstd2, up, act;
    // MoE: up and act hold the permuted rows (up to N*k); ye the experts' outputs per row.
    Tensor ye;
    std::shared_ptr<MoeRouting> route;
    // Expert parallelism: the rows this rank's experts received (xe, grouped by local expert),
    // their up and act, and how they came (moe.cpp's MoeDispatch).
    std::shared_ptr<MoeDispatch> dispatch;
  };
  void alloc_layer(const ModelConfig& c, LayerActs& a, bool input, bool body, bool core);
  // Which storage layer l's activations live in: its own, or the shared recompute scratch.
  Recompute mode(int l) const;
  // Layer l of the stage (its adapter's slots, with LoRA).
  void forward_layer(const Model& model, int l, const LayerParams& p, LayerActs& a, float* x_next);
  void backward_layer(const Model& model, int l, const LayerParams& p, const LayerParams& gp,
                      LayerActs& a);
  // A Mixtral layer's MLP: x_next = x_mid + sum over each token's experts of weight * expert(ln2),
  // each expert one GEMM over its permuted rows; and its backward, from dy = d x_next, into
  // dln_ (d ln2). Under expert parallelism the rows travel to their experts' ranks and back.
  void forward_moe(const ModelConfig& c, const LayerParams& p, LayerActs& a, float* x_next);
  void backward_moe(const ModelConfig& c, const LayerParams& p, const LayerParams& gp, LayerActs& a,
                    const float* dy);
  // This rank's experts over their rows: x (rows, C) grouped by local expert as `offsets` (El+1)
  // says -> up (rows, 2F), act (rows, F), y (rows, C); and the backward from dy (rows, C) into dx
  // (rows, C) and the experts' gradients (gp).
  void experts_forward(const ModelConfig& c, const LayerParams& p, const std::vector<int>& offsets,
                       const float* x, float* up, float* act, float* y);
  void experts_backward(const ModelConfig& c, const LayerParams& p, const LayerParams& gp,
                        const std::vector<int>& offsets, const float* x, const float* up,
                        const float* act, const float* dy, float* dx);
  // The auxiliary losses' share of the step's loss.
  double moe_loss() const;
  // The adapter's terms for layer l's fused GEMM `site` (nothing without LoRA): forward adds them
  // to y (N, ldy) from the input x; backward adds the adapter's gradients and dx's share.
  void lora_forward(int l, LoraSite site, const float* x, float* y, int ldy);
  void lora_backward(int l, LoraSite site, const float* x, const float* dy, int ldy, float* dx);
  // The gradients step() binds: the model's layout, or with LoRA none (all null) and the
  // adapter's in lora_grads_; null grads (forward only) bind nothing.
  ModelParams bind_grads(const Model& model, float* grads);
  LoraTerm lora_term() const;  // the adapter's weights, gradient and dropout for this step
  // The embedding (on the first stage) and the stage's layers, from ids or from `in`.
  void forward(const Model& model, ModelParams& w, ModelParams& g, const int* ids, const float* in);
  // On the last stage: the final norm and, given targets, the loss; with `backward` also the LM
  // head's gradient and the final norm's, which leaves dres_ holding d x_out.
  double head(const Model& model, ModelParams& w, ModelParams& g, const int* targets, bool backward,
              float grad_scale);
  // The stage's layers and (on the first stage) the embedding, from dres_ (the last stage) or
  // `dout`.
  void backward(const Model& model, ModelParams& w, ModelParams& g, const int* ids,
                const float* dout);
  void check_ids(const Model& model, const int* ids) const;
  void bind(int unit, bool backward, ModelParams& w, ModelParams& g) {
    if (hooks_) hooks_->bind(unit, backward, w, g);
  }
  void done(int unit, bool backward) {
    if (hooks_) hooks_->done(unit, backward);
  }

  // Tensor parallelism (Megatron's g and f). sum_rows: the sum over tp of a row-parallel GEMM's
  // partial output (N,C), as this rank's rows of the residual stream: in place (rows == partial)
  // or, with sequence parallelism, reduce-scattered into rows (Ns,C). gather_rows: the residual
  // rows as the (N,C) input of a column-parallel GEMM: full == rows, or all-gathered into full.
  // Without tensor parallelism both do nothing.
  void sum_rows(float* partial, float* rows);
  void gather_rows(const float* rows, float* full);
  // Sequence parallelism: the norms (and GPT-2's positions) see only this rank's rows, so a
  // unit's gradients of them are this rank's part. set_aside points them at zeroed scratch (and
  // returns where they pointed); fold_aside sums the scratch over tp and adds it there. Both do
  // nothing without sequence parallelism.
  std::vector<float*> set_aside(std::initializer_list<std::pair<float**, int64_t>> grads);
  void fold_aside(std::initializer_list<std::pair<float**, int64_t>> grads,
                  const std::vector<float*>& real);

  int B_, T_, C_;
  int first_layer_;               // the stage's first layer (recompute_layers counts globally)
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
  bool packed_ = false;  // pos_ came from set_positions
  const int* packed() const { return packed_ ? pos_.data() : nullptr; }
  std::vector<float> losses_;
  int64_t counted_ = 0;
  int64_t comm_bytes_ = 0;
  StepHooks* hooks_ = nullptr;  // the current step's, if any
  // LoRA: the adapter's gradient in the current training step (null: forward only, no dropout).
  float* lora_grads_ = nullptr;
  uint64_t lora_seed_ = 0;
  std::unique_ptr<LoraScratch> lora_scratch_;
  // Mixture-of-Experts scratch: the permuted inputs and their gradient (N*k, C), the outputs'
  // gradient (N*k, C), the router's logits and their gradient (N, E), d weight (N, k).
  bool moe_ = false;
  MoeConfig moe_config_;
  int first_expert_ = 0, local_experts_ = 0;  // this rank's experts (all of them without ep)
  bool ep_ = false;                           // TrainOptions::ep has more than one rank
  float grad_scale_ = 1.0f;   // the current step's (the auxiliary losses' gradients take it too)
  bool recomputing_ = false;  // in backward's rerun of a layer: its routing is counted already
  Tensor moe_x_, moe_dx_, moe_dy_, moe_logits_, moe_dlogits_, moe_dw_;
  MoeStats moe_stats_;
};

}  // namespace kiln

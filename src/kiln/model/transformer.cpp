#include "kiln/model/transformer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/dist/comm.h"
#include "kiln/model/lora_linear.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/cross_entropy.h"
#include "kiln/ops/elementwise.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/layer_norm.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/rms_norm.h"
#include "kiln/ops/rope.h"

namespace kiln {

namespace cpu = ops::cpu;
using ops::WeightLayout;

namespace {

bool is_embedding(const std::string& name) {
  return name.find("embed_tokens") != std::string::npos ||
         name.find(".wte.") != std::string::npos || name.find(".wpe.") != std::string::npos;
}

}  // namespace

std::vector<ParamInfo> param_layout(const ModelConfig& cfg, const PipelineStage& stage) {
  KILN_CHECK(stage.num_layers >= 1 && stage.first_layer >= 0 &&
                 stage.first_layer + stage.num_layers <= cfg.layers,
             "model", "pipeline stage layers [", stage.first_layer, ", ",
             stage.first_layer + stage.num_layers, ") are outside the model's ", cfg.layers,
             " layers");
  const int64_t C = cfg.hidden, V = cfg.vocab_size, F = cfg.intermediate, D = cfg.head_dim;
  const int64_t HD = int64_t(cfg.heads) * D, KD = int64_t(cfg.kv_heads) * D;
  const int layer_end = stage.first_layer + stage.num_layers;
  const bool wte = stage.holds_token_embedding(cfg.tie_embeddings);
  std::vector<ParamInfo> params;
  int64_t offset = 0;
  auto add = [&](std::string name, Shape shape) {
    bool decay = shape.size() == 2 && !is_embedding(name);
    params.push_back({std::move(name), shape, offset, decay});
    offset += shape_numel(shape);
  };
  if (cfg.arch == Arch::llama) {
    if (wte) add("model.embed_tokens.weight", {V, C});
    for (int l = stage.first_layer; l < layer_end; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {C});
      add(p + "self_attn.q_proj.weight", {HD, C});  // q|k|v back to back: one GEMM
      add(p + "self_attn.k_proj.weight", {KD, C});
      add(p + "self_attn.v_proj.weight", {KD, C});
      add(p + "self_attn.o_proj.weight", {C, HD});
      add(p + "post_attention_layernorm.weight", {C});
      if (cfg.moe.enabled()) {
        const std::string moe = p + "block_sparse_moe.";
        add(moe + "gate.weight", {int64_t(cfg.moe.experts), C});
        // This part's experts (all of them, or expert parallelism's run).
        const int e0 = stage.first_expert;
        const int e1 = stage.num_experts < 0 ? cfg.moe.experts : e0 + stage.num_experts;
        KILN_CHECK(e0 >= 0 && e0 < e1 && e1 <= cfg.moe.experts, "model", "experts [", e0, ", ",
                   e1, ") are outside the model's ", cfg.moe.experts);
        for (int e = e0; e < e1; ++e) {
          const std::string x = moe + "experts." + std::to_string(e) + ".";
          add(x + "w1.weight", {F, C});  // gate|up back to back: one GEMM per expert
          add(x + "w3.weight", {F, C});
        }
        for (int e = e0; e < e1; ++e)
          add(moe + "experts." + std::to_string(e) + ".w2.weight", {C, F});
        continue;
      }
      add(p + "mlp.gate_proj.weight", {F, C});  // gate|up back to back: one GEMM
      add(p + "mlp.up_proj.weight", {F, C});
      add(p + "mlp.down_proj.weight", {C, F});
    }
    if (stage.has_head) add("model.norm.weight", {C});
  } else {
    if (wte) add("transformer.wte.weight", {V, C});
    if (stage.has_embedding) add("transformer.wpe.weight", {int64_t(cfg.max_positions), C});
    for (int l = stage.first_layer; l < layer_end; ++l) {
      std::string p = "transformer.h." + std::to_string(l) + ".";
      add(p + "ln_1.weight", {C});
      add(p + "ln_1.bias", {C});
      add(p + "attn.c_attn.weight", {C, 3 * HD});  // HD = C, but for a tensor-parallel shard
      add(p + "attn.c_attn.bias", {3 * HD});
      add(p + "attn.c_proj.weight", {HD, C});
      add(p + "attn.c_proj.bias", {C});
      add(p + "ln_2.weight", {C});
      add(p + "ln_2.bias", {C});
      add(p + "mlp.c_fc.weight", {C, F});
      add(p + "mlp.c_fc.bias", {F});
      add(p + "mlp.c_proj.weight", {F, C});
      add(p + "mlp.c_proj.bias", {C});
    }
    if (stage.has_head) {
      add("transformer.ln_f.weight", {C});
      add("transformer.ln_f.bias", {C});
    }
  }
  if (stage.has_head && !cfg.tie_embeddings) add("lm_head.weight", {V, C});
  return params;
}

std::vector<ParamInfo> param_layout(const ModelConfig& cfg) {
  return param_layout(cfg, full_model_stage(cfg));
}

Model::Model(const ModelConfig& cfg, const PipelineStage& stage) : cfg_(cfg), stage_(stage) {
  cfg_.validate("model");
  params_ = param_layout(cfg_, stage);
  weights_ = Tensor::zeros({params_.back().offset + params_.back().numel()});
  layout_base_ = weights_.f32();
  layout_ = locate(weights_.f32());
}

const ParamInfo& Model::param(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return p;
  fail("model", "no parameter named '", name, "' (first is '", params_.front().name, "')");
}

Tensor Model::param_view(const ParamInfo& p, const Tensor& flat) const {
  return Tensor::view(flat.f32() + p.offset, p.shape, DType::f32);
}

ModelParams Model::bind(float* flat) const {
  // The name lookups ran once, in the constructor (locate); here every pointer is only moved
  // from the layout's base to `flat`. bind runs on every training step and decoded token.
  ModelParams m = layout_;
  for_each_pointer(m, [&](float*& p) {
    if (p) p = flat + (p - layout_base_);
  });
  return m;
}

ModelParams Model::locate(float* flat) const {
  ModelParams m{};
  auto at = [&](const std::string& name) { return flat + param(name).offset; };
  bool llama = cfg_.arch == Arch::llama;
  const bool wte = stage_.holds_token_embedding(cfg_.tie_embeddings);
  m.layers.resize(stage_.num_layers);
  if (llama) {
    if (wte) m.wte = at("model.embed_tokens.weight");
    if (stage_.has_head) m.lnf_w = at("model.norm.weight");
    for (int i = 0; i < stage_.num_layers; ++i) {
      std::string p = "model.layers." + std::to_string(stage_.first_layer + i) + ".";
      LayerParams& L = m.layers[i];
      L = {};
      L.ln1_w = at(p + "input_layernorm.weight");
      L.qkv_w = at(p + "self_attn.q_proj.weight");
      L.o_w = at(p + "self_attn.o_proj.weight");
      L.ln2_w = at(p + "post_attention_layernorm.weight");
      if (cfg_.moe.enabled()) {
        L.router_w = at(p + "block_sparse_moe.gate.weight");
        const std::string first = std::to_string(stage_.first_expert);
        L.up_w = at(p + "block_sparse_moe.experts." + first + ".w1.weight");
        L.down_w = at(p + "block_sparse_moe.experts." + first + ".w2.weight");
        continue;
      }
      L.up_w = at(p + "mlp.gate_proj.weight");
      L.down_w = at(p + "mlp.down_proj.weight");
    }
  } else {
    if (wte) m.wte = at("transformer.wte.weight");
    if (stage_.has_embedding) m.wpe = at("transformer.wpe.weight");
    if (stage_.has_head) {
      m.lnf_w = at("transformer.ln_f.weight");
      m.lnf_b = at("transformer.ln_f.bias");
    }
    for (int i = 0; i < stage_.num_layers; ++i) {
      std::string p = "transformer.h." + std::to_string(stage_.first_layer + i) + ".";
      LayerParams& L = m.layers[i];
      L.ln1_w = at(p + "ln_1.weight");
      L.ln1_b = at(p + "ln_1.bias");
      L.qkv_w = at(p + "attn.c_attn.weight");
      L.qkv_b = at(p + "attn.c_attn.bias");
      L.o_w = at(p + "attn.c_proj.weight");
      L.o_b = at(p + "attn.c_proj.bias");
      L.ln2_w = at(p + "ln_2.weight");
      L.ln2_b = at(p + "ln_2.bias");
      L.up_w = at(p + "mlp.c_fc.weight");
      L.up_b = at(p + "mlp.c_fc.bias");
      L.down_w = at(p + "mlp.c_proj.weight");
      L.down_b = at(p + "mlp.c_proj.bias");
    }
  }
  if (stage_.has_head) m.lm_head = cfg_.tie_embeddings ? m.wte : at("lm_head.weight");
  return m;
}

void Model::init_weights(uint64_t seed) {
  Rng rng(seed);
  const float std = cfg_.initializer_range;
  const float resid_std = std / std::sqrt(2.0f * float(cfg_.layers));
  float* w = weights_.f32();
  for (const auto& p : params_) {
    float* x = w + p.offset;
    const int64_t n = p.numel();
    const bool bias = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0;
    const bool norm = p.shape.size() == 1 && !bias;
    const bool resid = p.name.find("o_proj") != std::string::npos ||
                       p.name.find("down_proj") != std::string::npos ||
                       p.name.ends_with(".w2.weight") || p.name.find("c_proj") != std::string::npos;
    for (int64_t i = 0; i < n; ++i) {
      x[i] = norm ? 1.0f : bias ? 0.0f : (resid ? resid_std : std) * rng.normal();
    }
  }
}

// Allocates one layer's activation tensors: x_in when `input`, the attention output and
// log-sum-exp when `core`, everything else when `body`.
void TrainState::alloc_layer(const ModelConfig& c, LayerActs& a, bool input, bool body, bool core) {
  const int64_t N = int64_t(B_) * T_, Ns = Ns_, C = c.hidden, F = c.intermediate, D = c.head_dim;
  const int64_t HD = int64_t(c.heads) * D, QKV = (int64_t(c.heads) + 2 * c.kv_heads) * D;
  const bool gpt2 = c.arch == Arch::gpt2;
  if (input) a.x_in = Tensor::empty({Ns, C});
  if (core) {
    a.att = Tensor::empty({N, HD});
    a.lse = Tensor::empty({int64_t(B_), int64_t(c.heads), int64_t(T_)});
  }
  if (!body) return;
  a.ln1 = Tensor::empty({N, C});
  if (gpt2) a.mean1 = Tensor::empty({Ns});
  a.rstd1 = Tensor::empty({Ns});
  a.qkv = Tensor::empty({N, QKV});
  a.x_mid = Tensor::empty({Ns, C});
  a.ln2 = Tensor::empty({N, C});
  if (gpt2) a.mean2 = Tensor::empty({Ns});
  a.rstd2 = Tensor::empty({Ns});
  const int64_t rows = c.moe.enabled() ? N * c.moe.experts_per_tok : N;
  a.up = Tensor::empty({rows, c.arch == Arch::llama ? 2 * F : F});
  a.act = Tensor::empty({rows, F});
  if (c.moe.enabled()) {
    a.ye = Tensor::empty({rows, C});
    a.route = std::make_shared<MoeRouting>();
    a.dispatch = std::make_shared<MoeDispatch>();
  }
}

TrainState::TrainState(const Model& model, int B, int T, TrainOptions opt)
    : B_(B),
      T_(T),
      first_layer_(model.stage().first_layer),
      opt_(opt),
      lin_(opt.precision, opt.nf4) {
  const ModelConfig& c = model.config();
  KILN_CHECK(B > 0 && T > 0, "train", "batch size and sequence length must be positive, got B=", B,
             " T=", T);
  KILN_CHECK(T <= c.max_positions, "train", "sequence length ", T,
             " exceeds the model's max_position_embeddings (", c.max_positions,
             "); lower train.seq_len or raise the model's context");
  KILN_CHECK(opt.recompute_layers >= -1 && opt.recompute_layers <= c.layers, "train",
             "recompute_layers = ", opt.recompute_layers, " but the model has ", c.layers,
             " layers; use -1 (all) or 0..", c.layers);
  const int64_t N = int64_t(B) * T, C = c.hidden, F = c.intermediate, D = c.head_dim;
  const int64_t HD = int64_t(c.heads) * D, QKV = (int64_t(c.heads) + 2 * c.kv_heads) * D;
  const int64_t UP = c.arch == Arch::llama ? 2 * F : F;
  const bool gpt2 = c.arch == Arch::gpt2;
  C_ = c.hidden;
  tp_ = opt.tp && opt.tp->size() > 1;
  sp_ = tp_ && opt.sequence_parallel;
  KILN_CHECK(!tp_ || opt.vocab_total > 0, "train",
             "tensor parallelism needs the shard's vocabulary (TensorParallelMap::train_options)");
  KILN_CHECK(!opt.lora || !tp_, "train",
             "LoRA trains a whole model, not a tensor-parallel shard; use parallel.tp = 1");
  if (opt.lora) lora_scratch_ = std::make_unique<LoraScratch>();
  moe_ = c.moe.enabled();
  moe_config_ = c.moe;
  if (moe_) {
    const PipelineStage& st = model.stage();
    first_expert_ = st.first_expert;
    local_experts_ = st.num_experts < 0 ? c.moe.experts : st.num_experts;
    ep_ = opt.ep && opt.ep->size() > 1;
    const int ep = ep_ ? opt.ep->size() : 1;
    KILN_CHECK(local_experts_ * ep == c.moe.experts &&
                   first_expert_ == (ep_ ? opt.ep->rank() : 0) * local_experts_,
               "train", "the model holds experts [", first_expert_, ", ",
               first_expert_ + local_experts_, ") of ", c.moe.experts,
               ", which is not this rank's part under expert parallelism over ", ep, " ranks");
    KILN_CHECK(!tp_, "train",
               "a Mixture-of-Experts model trains without tensor parallelism for now; use "
               "parallel.tp = 1");
    KILN_CHECK(!opt.lora, "train",
               "LoRA on a Mixture-of-Experts model is not built; fine-tune it with method: full");
    KILN_CHECK(model.stage().has_embedding && model.stage().has_head, "train",
               "a Mixture-of-Experts model trains as one pipeline stage for now (its auxiliary "
               "loss pools every layer's routing); use parallel.pp = 1");
  }
  Ns_ = int(N);
  if (sp_) {
    const int tp = opt.tp->size();
    KILN_CHECK(N % tp == 0, "train", "sequence parallelism splits the ", N,
               " token rows (batch x seq_len per data-parallel rank) over parallel.tp = ", tp,
               " ranks, which does not divide them; change train.batch_size or train.seq_len");
    Ns_ = int(N / tp);
    row0_ = Ns_ * opt.tp->rank();
    full_ = Tensor::empty({N, C});
    norm_s_ = Tensor::empty({int64_t(Ns_), C});
    dln_s_ = Tensor::empty({int64_t(Ns_), C});
  }
  const int64_t Ns = Ns_;
  const int layers = model.stage().num_layers;
  acts_.resize(layers);
  bool any_full = false, any_selective = false;
  for (int l = 0; l < layers; ++l) {
    LayerActs& a = acts_[l];
    Recompute m = mode(l);
    any_full |= m == Recompute::full;
    any_selective |= m == Recompute::selective;
    alloc_layer(c, a, true, m != Recompute::full, m == Recompute::none);
  }
  if (any_full || any_selective) alloc_layer(c, scratch_, false, any_full, true);
  x_out_ = Tensor::empty({Ns, C});
  if (model.stage().has_head) {
    lnf_ = Tensor::empty({N, C});
    if (gpt2) meanf_ = Tensor::empty({Ns});
    rstdf_ = Tensor::empty({Ns});
    dlnf_ = Tensor::empty({N, C});
  }
  dres_ = Tensor::empty({Ns, C});
  dln_ = Tensor::empty({N, C});
  datt_ = Tensor::empty({N, HD});
  dqkv_ = Tensor::empty({N, QKV});
  const int64_t rows = moe_ ? N * c.moe.experts_per_tok : N;  // MoE: the permuted rows
  dup_ = Tensor::empty({rows, UP});
  dact_ = Tensor::empty({rows, F});
  if (moe_) {
    const int64_t E = c.moe.experts, k = c.moe.experts_per_tok;
    moe_x_ = Tensor::empty({rows, C});
    moe_dx_ = Tensor::empty({rows, C});
    moe_dy_ = Tensor::empty({rows, C});
    moe_logits_ = Tensor::empty({N, E});
    moe_dlogits_ = Tensor::empty({N, E});
    moe_dw_ = Tensor::empty({N, k});
    moe_stats_.reset(int(E));
  }
  pos_.resize(N);
  for (int64_t n = 0; n < N; ++n) pos_[n] = int(n % T);
  losses_.assign(N, 0.0f);
  if (!gpt2) {
    std::vector<float> inv_freq(D / 2);
    ops::rope_inv_freq(inv_freq.data(), int(D), c.rope_theta, c.rope_scaling, T);
    rope_cos_ = Tensor::empty({int64_t(T), D / 2});
    rope_sin_ = Tensor::empty({int64_t(T), D / 2});
    ops::rope_table(rope_cos_.f32(), rope_sin_.f32(), inv_freq.data(), T, int(D));
  }
  refresh_weights(model);
}

TrainState::~TrainState() = default;

Recompute TrainState::mode(int l) const {
  if (opt_.recompute == Recompute::none) return Recompute::none;
  const int global = first_layer_ + l;  // recompute_layers counts from the model's first layer
  return (opt_.recompute_layers < 0 || global < opt_.recompute_layers) ? opt_.recompute
                                                                       : Recompute::none;
}

size_t TrainState::bytes() const {
  size_t b = lin_.bytes() + (lora_scratch_ ? lora_scratch_->bytes() : 0);
  auto add = [&](const LayerActs& a) {
    for (const Tensor* t : {&a.x_in, &a.ln1, &a.mean1, &a.rstd1, &a.qkv, &a.att, &a.lse, &a.x_mid,
                            &a.ln2, &a.mean2, &a.rstd2, &a.up, &a.act, &a.ye})
      if (t->defined()) b += t->nbytes();
  };
  for (const auto& a : acts_) add(a);
  add(scratch_);
  for (const Tensor* t :
       {&x_out_,    &lnf_,   &meanf_,  &rstdf_,  &dlnf_,       &dres_,        &dln_,
        &datt_,     &dqkv_,  &dup_,    &dact_,   &full_,       &norm_s_,      &dln_s_,
        &sp_grads_, &moe_x_, &moe_dx_, &moe_dy_, &moe_logits_, &moe_dlogits_, &moe_dw_})
    if (t->defined()) b += t->nbytes();
  return b;
}

void TrainState::sum_rows(float* partial, float* rows) {
  const int64_t n = int64_t(Ns_) * C_;
  if (sp_) {
    opt_.tp->reduce_scatter(partial, rows, n);
    comm_bytes_ += dist::scatter_gather_bytes(opt_.tp->size(), n);
  } else if (tp_) {
    opt_.tp->all_reduce(partial, n);
    comm_bytes_ += dist::all_reduce_bytes(opt_.tp->size(), n);
  }
}

std::vector<float*> TrainState::set_aside(
    std::initializer_list<std::pair<float**, int64_t>> grads) {
  std::vector<float*> real;
  if (!sp_) return real;
  int64_t total = 0;
  for (auto [ptr, n] : grads) total += *ptr ? n : 0;
  if (sp_grads_.numel() < total) sp_grads_ = Tensor::empty({total});
  std::memset(sp_grads_.raw(), 0, size_t(total) * sizeof(float));
  int64_t off = 0;
  for (auto [ptr, n] : grads) {
    real.push_back(*ptr);
    if (!*ptr) continue;
    *ptr = sp_grads_.f32() + off;
    off += n;
  }
  return real;
}

void TrainState::fold_aside(std::initializer_list<std::pair<float**, int64_t>> grads,
                            const std::vector<float*>& real) {
  if (!sp_) return;
  int64_t total = 0;
  for (auto [ptr, n] : grads) total += *ptr ? n : 0;
  opt_.tp->all_reduce(sp_grads_.f32(), total);
  comm_bytes_ += dist::all_reduce_bytes(opt_.tp->size(), total);
  size_t i = 0;
  int64_t off = 0;
  for (auto [ptr, n] : grads) {
    if (float* dst = real[i++]) {
      cpu::add(dst, dst, sp_grads_.f32() + off, n);
      *ptr = dst;
      off += n;
    }
  }
}

void TrainState::gather_rows(const float* rows, float* full) {
  if (!sp_) return;
  const int64_t n = int64_t(Ns_) * C_;
  opt_.tp->all_gather(rows, full, n);
  comm_bytes_ += dist::scatter_gather_bytes(opt_.tp->size(), n);
}

// One transformer block, x_next = block(a.x_in), saving what backward needs in `a`. Under tensor
// parallelism the GEMMs and attention see all N rows and this rank's heads and F columns; the
// norms and residual adds see the Ns rows of the residual stream held here.
void TrainState::forward_layer(const Model& model, int l, const LayerParams& p, LayerActs& a,
                               float* x_next) {
  const ModelConfig& c = model.config();
  const int N = B_ * T_, Ns = Ns_, C = c.hidden, F = c.intermediate, D = c.head_dim, H = c.heads,
            K = c.kv_heads;
  const int HD = H * D, QKV = (H + 2 * K) * D;
  const bool llama = c.arch == Arch::llama;
  const WeightLayout layout = llama ? WeightLayout::out_in : WeightLayout::in_out;
  // A row-parallel layer's bias is added by one rank, before the partial outputs are summed.
  const bool bias_here = !tp_ || opt_.tp->rank() == 0;
  // Attention block: x_mid = x_in + o_proj(attention(rope(qkv(norm(x_in)))))
  float* ln = sp_ ? norm_s_.f32() : a.ln1.f32();
  if (llama) {
    cpu::rms_norm_forward(ln, a.rstd1.f32(), a.x_in.f32(), p.ln1_w, Ns, C, c.norm_eps);
  } else {
    cpu::layer_norm_forward(ln, a.mean1.f32(), a.rstd1.f32(), a.x_in.f32(), p.ln1_w, p.ln1_b, Ns, C,
                            c.norm_eps);
  }
  gather_rows(ln, a.ln1.f32());
  lin_.forward(a.qkv.f32(), a.ln1.f32(), p.qkv_w, p.qkv_b, N, C, QKV, layout);
  lora_forward(l, LoraSite::qkv, a.ln1.f32(), a.qkv.f32(), QKV);
  if (llama) {
    cpu::rope_forward(a.qkv.f32(), N, H + K, D, QKV, pos_.data(), rope_cos_.f32(), rope_sin_.f32());
  }
  cpu::attention_forward(a.att.f32(), a.lse.f32(), a.qkv.f32(), B_, T_, H, K, D, packed());
  float* o = sp_ ? full_.f32() : a.x_mid.f32();
  lin_.forward(o, a.att.f32(), p.o_w, bias_here ? p.o_b : nullptr, N, HD, C, layout);
  lora_forward(l, LoraSite::o, a.att.f32(), o, C);
  sum_rows(o, a.x_mid.f32());
  cpu::add(a.x_mid.f32(), a.x_mid.f32(), a.x_in.f32(), int64_t(Ns) * C);
  // MLP block: x_next = x_mid + down(act(up(norm(x_mid))))
  ln = sp_ ? norm_s_.f32() : a.ln2.f32();
  if (moe_) {
    cpu::rms_norm_forward(a.ln2.f32(), a.rstd2.f32(), a.x_mid.f32(), p.ln2_w, N, C, c.norm_eps);
    forward_moe(c, p, a, x_next);
    return;
  }
  if (llama) {
    cpu::rms_norm_forward(ln, a.rstd2.f32(), a.x_mid.f32(), p.ln2_w, Ns, C, c.norm_eps);
    gather_rows(ln, a.ln2.f32());
    lin_.forward(a.up.f32(), a.ln2.f32(), p.up_w, nullptr, N, C, 2 * F, layout);
    lora_forward(l, LoraSite::up, a.ln2.f32(), a.up.f32(), 2 * F);
    cpu::swiglu_forward(a.act.f32(), a.up.f32(), N, F);
  } else {
    cpu::layer_norm_forward(ln, a.mean2.f32(), a.rstd2.f32(), a.x_mid.f32(), p.ln2_w, p.ln2_b, Ns,
                            C, c.norm_eps);
    gather_rows(ln, a.ln2.f32());
    lin_.forward(a.up.f32(), a.ln2.f32(), p.up_w, p.up_b, N, C, F, layout);
    lora_forward(l, LoraSite::up, a.ln2.f32(), a.up.f32(), F);
    cpu::gelu_forward(a.act.f32(), a.up.f32(), int64_t(N) * F);
  }
  float* down = sp_ ? full_.f32() : x_next;
  lin_.forward(down, a.act.f32(), p.down_w, bias_here ? p.down_b : nullptr, N, F, C, layout);
  lora_forward(l, LoraSite::down, a.act.f32(), down, C);
  sum_rows(down, x_next);
  cpu::add(x_next, x_next, a.x_mid.f32(), int64_t(Ns) * C);
}

void TrainState::forward(const Model& model, ModelParams& w, ModelParams& g, const int* ids,
                         const float* in) {
  const ModelConfig& c = model.config();
  const int N = B_ * T_, C = c.hidden, layers = model.stage().num_layers;
  if (model.stage().has_embedding) {
    bind(StepHooks::kEmbedding, false, w, g);
    float* x0 = acts_[0].x_in.f32();
    if (tp_) {  // vocabulary-parallel: each rank looks up the ids in its rows, zeros elsewhere
      float* e = sp_ ? full_.f32() : x0;
      cpu::embedding_forward_shard(e, ids, w.wte, N, C, opt_.vocab_begin, c.vocab_size);
      sum_rows(e, x0);
    } else {
      cpu::embedding_forward(x0, ids, w.wte, N, C, false);
    }
    if (c.arch == Arch::gpt2) cpu::embedding_forward(x0, pos_.data() + row0_, w.wpe, Ns_, C, true);
    done(StepHooks::kEmbedding, false);
  } else {
    std::memcpy(acts_[0].x_in.f32(), in, acts_[0].x_in.nbytes());
  }
  if (moe_) moe_stats_.reset(c.moe.experts);
  for (int l = 0; l < layers; ++l) {
    float* x_next = l + 1 < layers ? acts_[l + 1].x_in.f32() : x_out_.f32();
    bind(l, false, w, g);
    Recompute m = mode(l);
    if (m == Recompute::none) {
      forward_layer(model, l, w.layers[l], acts_[l], x_next);
    } else {
      // Run the block in scratch; keep what this layer's mode keeps.
      LayerActs a = m == Recompute::full ? scratch_ : acts_[l];
      a.x_in = acts_[l].x_in;
      a.att = scratch_.att;
      a.lse = scratch_.lse;
      forward_layer(model, l, w.layers[l], a, x_next);
    }
    done(l, false);
  }
}

double TrainState::head(const Model& model, ModelParams& w, ModelParams& g, const int* targets,
                        bool backward, float grad_scale) {
  const ModelConfig& c = model.config();
  const int N = B_ * T_, C = c.hidden;
  const bool llama = c.arch == Arch::llama;
  grad_scale_ = grad_scale;
  if (targets) {
    counted_ = 0;
    for (int n = 0; n < N; ++n) counted_ += targets[n] >= 0;
  }
  // Backward runs even when no target counts (its gradients are zero): every data-parallel rank
  // and pipeline stage must take part in the same collectives.
  const bool bwd = backward && targets;
  bind(StepHooks::kHead, bwd, w, g);
  float* ln = sp_ ? norm_s_.f32() : lnf_.f32();
  if (llama) {
    cpu::rms_norm_forward(ln, rstdf_.f32(), x_out_.f32(), w.lnf_w, Ns_, C, c.norm_eps);
  } else {
    cpu::layer_norm_forward(ln, meanf_.f32(), rstdf_.f32(), x_out_.f32(), w.lnf_w, w.lnf_b, Ns_, C,
                            c.norm_eps);
  }
  gather_rows(ln, lnf_.f32());  // the LM head sees every row
  double sum = 0;
  if (targets) {
    // The loss is the mean over counted tokens, so each token's gradient is scaled by 1/count.
    const float scale = grad_scale / float(std::max<int64_t>(counted_, 1));
    ops::VocabShard shard;  // tensor parallelism: this rank's rows of the vocabulary
    if (tp_) {
      shard.begin = opt_.vocab_begin;
      shard.total = opt_.vocab_total;
      shard.reduce = [this](float* x, int n, bool max) {
        opt_.tp->all_reduce(x, n, max ? dist::ReduceOp::max : dist::ReduceOp::sum);
        comm_bytes_ += dist::all_reduce_bytes(opt_.tp->size(), n);
      };
    }
    lin_.lm_head_cross_entropy(losses_.data(), bwd ? dlnf_.f32() : nullptr,
                               bwd ? g.lm_head : nullptr, lnf_.f32(), w.lm_head, targets, N, C,
                               c.vocab_size, scale, tp_ ? &shard : nullptr);
    for (int n = 0; n < N; ++n) sum += losses_[n];
  }
  if (bwd) {
    float* dres = dres_.f32();
    std::memset(dres, 0, dres_.nbytes());
    float* dlnf = sp_ ? dln_s_.f32() : dlnf_.f32();
    sum_rows(dlnf_.f32(), dlnf);  // the vocabulary-parallel LM head left partial sums
    const auto norm = {std::pair{&g.lnf_w, int64_t(C)}, std::pair{&g.lnf_b, int64_t(C)}};
    const auto real = set_aside(norm);
    if (llama) {
      cpu::rms_norm_backward(dres, g.lnf_w, dlnf, x_out_.f32(), w.lnf_w, rstdf_.f32(), Ns_, C);
    } else {
      cpu::layer_norm_backward(dres, g.lnf_w, g.lnf_b, dlnf, x_out_.f32(), w.lnf_w, meanf_.f32(),
                               rstdf_.f32(), Ns_, C);
    }
    fold_aside(norm, real);
  }
  done(StepHooks::kHead, bwd);
  return (targets && counted_ > 0 ? sum / double(counted_) : 0.0) + (targets ? moe_loss() : 0.0);
}

// Backward through one block. dres_ holds d x_next on entry and d x_in on exit (this rank's Ns
// rows). Under tensor parallelism the gradient entering each column-parallel GEMM's input is a
// partial sum (this rank's heads / F columns), summed over tp before the norm's backward.
void TrainState::backward_layer(const Model& model, int l, const LayerParams& p,
                                const LayerParams& gp, LayerActs& a) {
  const ModelConfig& c = model.config();
  const int N = B_ * T_, Ns = Ns_, C = c.hidden, F = c.intermediate, D = c.head_dim, H = c.heads,
            K = c.kv_heads;
  const int HD = H * D, QKV = (H + 2 * K) * D;
  const bool llama = c.arch == Arch::llama;
  const WeightLayout layout = llama ? WeightLayout::out_in : WeightLayout::in_out;
  float* dres = dres_.f32();
  float* dy = sp_ ? full_.f32() : dres;          // d x_next (then d x_mid) over all N rows
  float* dln = sp_ ? dln_s_.f32() : dln_.f32();  // the norm output's gradient, this rank's rows
  // MLP block. The residual passes d x_next straight to x_mid.
  gather_rows(dres, dy);
  if (moe_) {
    backward_moe(c, p, gp, a, dy);
    cpu::rms_norm_backward(dres, gp.ln2_w, dln_.f32(), a.x_mid.f32(), p.ln2_w, a.rstd2.f32(), N, C);
  } else {
    lin_.backward(dact_.f32(), gp.down_w, gp.down_b, dy, a.act.f32(), p.down_w, N, F, C, layout);
    lora_backward(l, LoraSite::down, a.act.f32(), dy, C, dact_.f32());
  }
  if (moe_) {
    // backward_moe did the experts and the router
  } else if (llama) {
    cpu::swiglu_backward(dup_.f32(), dact_.f32(), a.up.f32(), N, F);
    lin_.backward(dln_.f32(), gp.up_w, nullptr, dup_.f32(), a.ln2.f32(), p.up_w, N, C, 2 * F,
                  layout);
    lora_backward(l, LoraSite::up, a.ln2.f32(), dup_.f32(), 2 * F, dln_.f32());
    sum_rows(dln_.f32(), dln);
    cpu::rms_norm_backward(dres, gp.ln2_w, dln, a.x_mid.f32(), p.ln2_w, a.rstd2.f32(), Ns, C);
  } else {
    cpu::gelu_backward(dup_.f32(), dact_.f32(), a.up.f32(), int64_t(N) * F);
    lin_.backward(dln_.f32(), gp.up_w, gp.up_b, dup_.f32(), a.ln2.f32(), p.up_w, N, C, F, layout);
    lora_backward(l, LoraSite::up, a.ln2.f32(), dup_.f32(), F, dln_.f32());
    sum_rows(dln_.f32(), dln);
    cpu::layer_norm_backward(dres, gp.ln2_w, gp.ln2_b, dln, a.x_mid.f32(), p.ln2_w, a.mean2.f32(),
                             a.rstd2.f32(), Ns, C);
  }
  // Attention block. dres now holds d x_mid.
  gather_rows(dres, dy);
  lin_.backward(datt_.f32(), gp.o_w, gp.o_b, dy, a.att.f32(), p.o_w, N, HD, C, layout);
  lora_backward(l, LoraSite::o, a.att.f32(), dy, C, datt_.f32());
  cpu::attention_backward(dqkv_.f32(), datt_.f32(), a.qkv.f32(), a.att.f32(), a.lse.f32(), B_, T_,
                          H, K, D, packed());
  if (llama) {
    cpu::rope_backward(dqkv_.f32(), N, H + K, D, QKV, pos_.data(), rope_cos_.f32(),
                       rope_sin_.f32());
  }
  lin_.backward(dln_.f32(), gp.qkv_w, gp.qkv_b, dqkv_.f32(), a.ln1.f32(), p.qkv_w, N, C, QKV,
                layout);
  lora_backward(l, LoraSite::qkv, a.ln1.f32(), dqkv_.f32(), QKV, dln_.f32());
  sum_rows(dln_.f32(), dln);
  if (llama) {
    cpu::rms_norm_backward(dres, gp.ln1_w, dln, a.x_in.f32(), p.ln1_w, a.rstd1.f32(), Ns, C);
  } else {
    cpu::layer_norm_backward(dres, gp.ln1_w, gp.ln1_b, dln, a.x_in.f32(), p.ln1_w, a.mean1.f32(),
                             a.rstd1.f32(), Ns, C);
  }
}

void TrainState::backward(const Model& model, ModelParams& w, ModelParams& g, const int* ids,
                          const float* dout) {
  const ModelConfig& c = model.config();
  const int N = B_ * T_, C = c.hidden;
  float* dres = dres_.f32();  // gradient of the residual stream, walking down the layers
  if (!model.stage().has_head) std::memcpy(dres, dout, dres_.nbytes());  // else head() left it
  for (int l = model.stage().num_layers - 1; l >= 0; --l) {
    bind(l, true, w, g);
    LayerParams& gl = g.layers[l];
    const auto norms = {std::pair{&gl.ln1_w, int64_t(C)}, std::pair{&gl.ln1_b, int64_t(C)},
                        std::pair{&gl.ln2_w, int64_t(C)}, std::pair{&gl.ln2_b, int64_t(C)}};
    const auto real = set_aside(norms);
    Recompute m = mode(l);
    if (m == Recompute::none) {
      backward_layer(model, l, w.layers[l], g.layers[l], acts_[l]);
      fold_aside(norms, real);
      done(l, true);
      continue;
    }
    LayerActs a = m == Recompute::full ? scratch_ : acts_[l];
    a.x_in = acts_[l].x_in;
    a.att = scratch_.att;
    a.lse = scratch_.lse;
    if (m == Recompute::full) {
      // Rebuild the block's activations; its output (already in the next layer's input, or in
      // x_out) is recomputed bit for bit, so it goes to a scratch row we do not need.
      recomputing_ = true;
      forward_layer(model, l, w.layers[l], a, dln_.f32());
      recomputing_ = false;
    } else {
      // Selective: only the attention core, from the saved qkv.
      cpu::attention_forward(a.att.f32(), a.lse.f32(), a.qkv.f32(), B_, T_, c.heads, c.kv_heads,
                             c.head_dim, packed());
    }
    backward_layer(model, l, w.layers[l], g.layers[l], a);
    fold_aside(norms, real);
    done(l, true);
  }
  if (!model.stage().has_embedding) return;  // dres is the gradient of the stage's input
  if (opt_.lora) return;                     // the embedding is frozen
  bind(StepHooks::kEmbedding, true, w, g);
  if (c.arch == Arch::gpt2) {
    const auto positions = {std::pair{&g.wpe, int64_t(c.max_positions) * C}};
    const auto real = set_aside(positions);
    cpu::embedding_backward(g.wpe, dres, pos_.data() + row0_, Ns_, C);
    fold_aside(positions, real);
  }
  float* dy = sp_ ? full_.f32() : dres;
  gather_rows(dres, dy);
  if (tp_) {
    cpu::embedding_backward_shard(g.wte, dy, ids, N, C, opt_.vocab_begin, c.vocab_size);
  } else {
    cpu::embedding_backward(g.wte, dy, ids, N, C);
  }
  done(StepHooks::kEmbedding, true);
}

void TrainState::experts_forward(const ModelConfig& c, const LayerParams& p,
                                 const std::vector<int>& offsets, const float* x, float* up,
                                 float* act, float* y) {
  const int C = c.hidden, F = c.intermediate, El = int(offsets.size()) - 1;
  for (int e = 0; e < El; ++e) {  // every expert's rows as one GEMM
    const int r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
    if (n == 0) continue;
    lin_.forward(up + int64_t(r0) * 2 * F, x + int64_t(r0) * C, p.up_w + int64_t(e) * 2 * F * C,
                 nullptr, n, C, 2 * F, WeightLayout::out_in);
  }
  cpu::swiglu_forward(act, up, offsets.back(), F);
  for (int e = 0; e < El; ++e) {
    const int r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
    if (n == 0) continue;
    lin_.forward(y + int64_t(r0) * C, act + int64_t(r0) * F, p.down_w + int64_t(e) * C * F,
                 nullptr, n, F, C, WeightLayout::out_in);
  }
}

void TrainState::experts_backward(const ModelConfig& c, const LayerParams& p,
                                  const LayerParams& gp, const std::vector<int>& offsets,
                                  const float* x, const float* up, const float* act,
                                  const float* dy, float* dx) {
  const int C = c.hidden, F = c.intermediate, El = int(offsets.size()) - 1;
  const int rows = offsets.back();
  if (dact_.numel() < int64_t(rows) * F) {  // expert parallelism: as many rows as arrived
    dact_ = Tensor::empty({int64_t(rows), int64_t(F)});
    dup_ = Tensor::empty({int64_t(rows), int64_t(2 * F)});
  }
  for (int e = 0; e < El; ++e) {
    const int r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
    if (n == 0) continue;
    lin_.backward(dact_.f32() + int64_t(r0) * F, gp.down_w + int64_t(e) * C * F, nullptr,
                  dy + int64_t(r0) * C, act + int64_t(r0) * F, p.down_w + int64_t(e) * C * F, n,
                  F, C, WeightLayout::out_in);
  }
  cpu::swiglu_backward(dup_.f32(), dact_.f32(), up, rows, F);
  for (int e = 0; e < El; ++e) {
    const int r0 = offsets[size_t(e)], n = offsets[size_t(e) + 1] - r0;
    if (n == 0) continue;
    lin_.backward(dx + int64_t(r0) * C, gp.up_w + int64_t(e) * 2 * F * C, nullptr,
                  dup_.f32() + int64_t(r0) * 2 * F, x + int64_t(r0) * C,
                  p.up_w + int64_t(e) * 2 * F * C, n, C, 2 * F, WeightLayout::out_in);
  }
}

namespace {

// Rows of C floats between two orders: to[i] = from[index[i]] (gather) or to[index[i]] = from[i].
void gather_rows_by(float* to, const float* from, const std::vector<int>& index, int C) {
  for (size_t i = 0; i < index.size(); ++i)
    std::memcpy(to + int64_t(i) * C, from + int64_t(index[i]) * C, size_t(C) * sizeof(float));
}
void scatter_rows_by(float* to, const float* from, const std::vector<int>& index, int C) {
  for (size_t i = 0; i < index.size(); ++i)
    std::memcpy(to + int64_t(index[i]) * C, from + int64_t(i) * C, size_t(C) * sizeof(float));
}
std::vector<int64_t> times(const std::vector<int64_t>& rows, int C) {
  std::vector<int64_t> n(rows);
  for (int64_t& x : n) x *= C;
  return n;
}

}  // namespace

void TrainState::forward_moe(const ModelConfig& c, const LayerParams& p, LayerActs& a,
                             float* x_next) {
  const int N = B_ * T_, C = c.hidden, F = c.intermediate, E = c.moe.experts,
            k = c.moe.experts_per_tok;
  const float* ln2 = a.ln2.f32();
  // The router in fp32 whatever the precision: a rounding must not move a token's experts.
  cpu::gemm(moe_logits_.f32(), ln2, p.router_w, N, E, C, false, true, 1.0f, 0.0f);
  MoeRouting& r = *a.route;
  moe_route(r, moe_logits_.f32(), N, E, k, c.moe.capacity_factor);
  if (!recomputing_) moe_stats_.add(r);
  const int M = r.rows();
  float* xs = moe_x_.f32();
  for (int i = 0; i < M; ++i)
    std::memcpy(xs + int64_t(i) * C, ln2 + int64_t(r.source[size_t(i)] / k) * C,
                size_t(C) * sizeof(float));
  if (!ep_) {
    experts_forward(c, p, r.offsets, xs, a.up.f32(), a.act.f32(), a.ye.f32());
  } else {
    // Each row to the rank owning its expert (the permuted order is already rank by rank), the
    // experts' outputs back in the same order.
    dist::Comm& ep = *opt_.ep;
    const int P = ep.size(), El = local_experts_;
    std::vector<float> counts(static_cast<size_t>(E)), arrived(size_t(P) * El);
    for (int e = 0; e < E; ++e)
      counts[size_t(e)] = float(r.offsets[size_t(e) + 1] - r.offsets[size_t(e)]);
    ep.all_to_all_v(counts.data(), std::vector<int64_t>(size_t(P), El), arrived.data(),
                    std::vector<int64_t>(size_t(P), El));
    MoeDispatch& d = *a.dispatch;
    moe_plan_dispatch(d, r, P, std::vector<int>(arrived.begin(), arrived.end()));
    const int R = d.rows();
    std::vector<float> xr(size_t(R) * C);
    ep.all_to_all_v(xs, times(d.send_rows, C), xr.data(), times(d.recv_rows, C));
    d.xe.resize(size_t(R) * C);
    d.up.resize(size_t(R) * 2 * F);
    d.act.resize(size_t(R) * F);
    d.ye.resize(size_t(R) * C);
    gather_rows_by(d.xe.data(), xr.data(), d.grouped, C);
    experts_forward(c, p, d.offsets, d.xe.data(), d.up.data(), d.act.data(), d.ye.data());
    scatter_rows_by(xr.data(), d.ye.data(), d.grouped, C);
    ep.all_to_all_v(xr.data(), times(d.recv_rows, C), a.ye.f32(), times(d.send_rows, C));
    comm_bytes_ += 8 * int64_t(M) * C;  // the rows out and back (an upper bound: own rows too)
  }
  std::memcpy(x_next, a.x_mid.f32(), size_t(N) * C * sizeof(float));
  for (int i = 0; i < M; ++i) {
    const int pair = r.source[size_t(i)];
    const float w = r.weight[size_t(pair)];
    float* x = x_next + int64_t(pair / k) * C;
    const float* y = a.ye.f32() + int64_t(i) * C;
    for (int j = 0; j < C; ++j) x[j] += w * y[j];
  }
}

void TrainState::backward_moe(const ModelConfig& c, const LayerParams& p, const LayerParams& gp,
                              LayerActs& a, const float* dy) {
  const int N = B_ * T_, C = c.hidden, E = c.moe.experts, k = c.moe.experts_per_tok;
  const MoeRouting& r = *a.route;
  const int M = r.rows();
  const float* ln2 = a.ln2.f32();
  float* xs = moe_x_.f32();
  float* dys = moe_dy_.f32();
  float* dw = moe_dw_.f32();
  std::memset(dw, 0, moe_dw_.nbytes());  // a dropped pair's weight has no gradient
  for (int i = 0; i < M; ++i) {
    const int pair = r.source[size_t(i)], t = pair / k;
    const float w = r.weight[size_t(pair)];
    const float* g = dy + int64_t(t) * C;
    const float* y = a.ye.f32() + int64_t(i) * C;
    float* d = dys + int64_t(i) * C;
    std::memcpy(xs + int64_t(i) * C, ln2 + int64_t(t) * C, size_t(C) * sizeof(float));
    double dot = 0;
    for (int j = 0; j < C; ++j) {
      d[j] = w * g[j];
      dot += double(g[j]) * y[j];
    }
    dw[pair] = float(dot);
  }
  float* dxs = moe_dx_.f32();
  if (!ep_) {
    experts_backward(c, p, gp, r.offsets, xs, a.up.f32(), a.act.f32(), dys, dxs);
  } else {
    // The outputs' gradients to the experts' ranks, the inputs' gradients back.
    dist::Comm& ep = *opt_.ep;
    MoeDispatch& d = *a.dispatch;
    const int R = d.rows();
    std::vector<float> buf(size_t(R) * C), dye(size_t(R) * C), dxe(size_t(R) * C);
    ep.all_to_all_v(dys, times(d.send_rows, C), buf.data(), times(d.recv_rows, C));
    gather_rows_by(dye.data(), buf.data(), d.grouped, C);
    experts_backward(c, p, gp, d.offsets, d.xe.data(), d.up.data(), d.act.data(), dye.data(),
                     dxe.data());
    scatter_rows_by(buf.data(), dxe.data(), d.grouped, C);
    ep.all_to_all_v(buf.data(), times(d.recv_rows, C), dxs, times(d.send_rows, C));
    comm_bytes_ += 8 * int64_t(M) * C;
  }
  // d ln2: the experts' input gradients back at their tokens, plus the router's.
  float* dln = dln_.f32();
  std::memset(dln, 0, size_t(N) * C * sizeof(float));
  for (int i = 0; i < M; ++i) {
    float* d = dln + int64_t(r.source[size_t(i)] / k) * C;
    const float* g = dxs + int64_t(i) * C;
    for (int j = 0; j < C; ++j) d[j] += g[j];
  }
  const float gs = grad_scale_;
  const float aux = c.moe.output_router_logits ? gs * c.moe.aux_loss_coef : 0.0f;
  moe_route_backward(moe_dlogits_.f32(), r, dw, moe_stats_, aux, gs * c.moe.z_loss_coef);
  cpu::gemm(dln, moe_dlogits_.f32(), p.router_w, N, C, E, false, false, 1.0f, 1.0f);
  if (gp.router_w)
    cpu::gemm(gp.router_w, moe_dlogits_.f32(), ln2, E, C, N, true, false, 1.0f, 1.0f);
}

double TrainState::moe_loss() const {
  if (!moe_) return 0;
  const MoeConfig& m = moe_config_;
  return (m.output_router_logits ? m.aux_loss_coef * moe_stats_.aux() : 0.0) +
         m.z_loss_coef * moe_stats_.z();
}

void TrainState::check_ids(const Model& model, const int* ids) const {
  if (!model.stage().has_embedding) return;
  const int V = tp_ ? opt_.vocab_total : model.config().vocab_size;  // the whole vocabulary
  for (int n = 0; n < B_ * T_; ++n) {
    KILN_CHECK(ids[n] >= 0 && ids[n] < V, "model", "token id ", ids[n], " at position ", n,
               " is outside the vocabulary [0, ", V,
               "): the data was tokenized with a different tokenizer");
  }
}

double TrainState::step(const Model& model, const int* ids, const int* targets, float* grads,
                        float grad_scale) {
  const double loss = forward_stage(model, ids, nullptr, targets, grads, grad_scale);
  if (grads && targets) backward_stage(model, ids, nullptr, grads);
  return loss;
}

double TrainState::step(const Model& model, const int* ids, const int* targets, StepHooks& hooks,
                        bool backward, float grad_scale) {
  KILN_CHECK(model.stage().has_embedding && model.stage().has_head, "model",
             "a step through StepHooks needs the whole model, not a pipeline stage");
  KILN_CHECK(!opt_.lora, "model", "a LoRA step takes the adapter's gradient, not StepHooks");
  check_ids(model, ids);
  ModelParams w{}, g{};
  w.layers.resize(size_t(model.stage().num_layers));
  g.layers.resize(size_t(model.stage().num_layers));
  hooks_ = &hooks;
  forward(model, w, g, ids, nullptr);
  const double loss = head(model, w, g, targets, backward, grad_scale);
  if (backward && targets) this->backward(model, w, g, ids, nullptr);
  hooks_ = nullptr;
  return loss;
}

double TrainState::forward_stage(const Model& model, const int* ids, const float* in,
                                 const int* targets, float* grads, float grad_scale) {
  check_ids(model, ids);
  hooks_ = nullptr;
  ModelParams w = model.bind(const_cast<float*>(model.weights().f32())), g{};
  g = bind_grads(model, grads);
  forward(model, w, g, ids, in);
  if (!model.stage().has_head) return 0.0;
  return head(model, w, g, targets, grads != nullptr, grad_scale);
}

const float* TrainState::backward_stage(const Model& model, const int* ids, const float* dout,
                                        float* grads) {
  hooks_ = nullptr;
  ModelParams w = model.bind(const_cast<float*>(model.weights().f32()));
  ModelParams g = bind_grads(model, grads);
  backward(model, w, g, ids, dout);
  return model.stage().has_embedding ? nullptr : dres_.f32();
}

ModelParams TrainState::bind_grads(const Model& model, float* grads) {
  lora_grads_ = opt_.lora ? grads : nullptr;
  if (!grads) return {};
  if (!opt_.lora) return model.bind(grads);
  ModelParams none{};
  none.layers.resize(size_t(model.stage().num_layers));
  return none;
}

void TrainState::set_positions(const int* positions) {
  const int64_t N = int64_t(B_) * T_;
  ops::check_attention_positions(positions, B_, T_);  // a position p <= t: within the tables
  packed_ = positions != nullptr;
  for (int64_t n = 0; n < N; ++n) pos_[n] = positions ? positions[n] : int(n % T_);
}

LoraTerm TrainState::lora_term() const {
  const LoraConfig& c = opt_.lora->config();
  // Dropout in training steps only (those with a gradient).
  return {opt_.lora->weights().f32(),
          lora_grads_,
          c.r,
          c.scaling(),
          lora_grads_ ? c.dropout : 0.0f,
          lora_seed_,
          opt_.precision == Precision::bf16};
}

void TrainState::lora_forward(int l, LoraSite site, const float* x, float* y, int ldy) {
  if (!opt_.lora) return;
  const LoraTerm t = lora_term();
  for (const LoraSlot& slot : opt_.lora->slots(l))
    if (slot.site == site) kiln::lora_forward(slot, t, x, B_ * T_, y, ldy, *lora_scratch_);
}

void TrainState::lora_backward(int l, LoraSite site, const float* x, const float* dy, int ldy,
                               float* dx) {
  if (!opt_.lora) return;
  const LoraTerm t = lora_term();
  for (const LoraSlot& slot : opt_.lora->slots(l))
    if (slot.site == site) kiln::lora_backward(slot, t, x, dy, ldy, dx, B_ * T_, *lora_scratch_);
}

}  // namespace kiln

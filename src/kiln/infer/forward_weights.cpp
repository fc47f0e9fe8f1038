#include "kiln/infer/forward_weights.h"

#include "kiln/core/error.h"
#include "kiln/model/block_spec.h"

namespace kiln {

ForwardWeights fp32_weights(const Model& model) {
  const ModelConfig& c = model.config();
  ModelParams p = model.bind(const_cast<float*>(model.weights().f32()));
  const int C = c.hidden, D = c.head_dim, H = c.heads, K = c.kv_heads, F = c.intermediate;
  const BlockSpec spec = block_spec(c);
  auto lin = [&](const float* w, const float* b, int out, int in) {
    return LinearWeight{w, nullptr, out, in, b, spec.layout};
  };
  ForwardWeights w;
  w.embed = p.wte;
  w.pos_embed = p.wpe;
  w.norm_f = p.lnf_w;
  w.norm_f_b = p.lnf_b;
  w.lm_head = {p.lm_head, nullptr, c.vocab_size, C};  // (V, C) in both families
  for (const LayerParams& l : p.layers) {
    LayerWeights e;
    e.ln1 = l.ln1_w;
    e.ln1_b = l.ln1_b;
    e.qkv = lin(l.qkv_w, l.qkv_b, (H + 2 * K) * D, C);
    e.o = lin(l.o_w, l.o_b, C, H * D);
    e.ln2 = l.ln2_w;
    e.ln2_b = l.ln2_b;
    if (c.moe.enabled()) {
      e.router = l.router_w;
      for (int x = 0; x < c.moe.experts; ++x) {
        e.expert_up.push_back(lin(l.up_w + int64_t(x) * 2 * F * C, nullptr, 2 * F, C));
        e.expert_down.push_back(lin(l.down_w + int64_t(x) * C * F, nullptr, C, F));
      }
    } else {
      e.up = lin(l.up_w, l.up_b, spec.up_width, C);
      e.down = lin(l.down_w, l.down_b, C, F);
    }
    w.layers.push_back(e);
  }
  return w;
}

ForwardWeights quantized_weights(const Model& model,
                                 const std::map<std::string, quant::QTensor>& qweights) {
  ForwardWeights w = fp32_weights(model);
  if (qweights.empty()) return w;
  // Rows of blocks concatenated: one QTensor for the fused projection, or null if a part is
  // missing or the types differ (then the projection stays fp32).
  auto fuse = [&](const std::vector<std::string>& names) -> std::shared_ptr<const quant::QTensor> {
    std::vector<const quant::QTensor*> parts;
    for (const auto& n : names) {
      auto it = qweights.find(n);
      if (it == qweights.end()) return nullptr;
      parts.push_back(&it->second);
    }
    auto q = std::make_shared<quant::QTensor>();
    q->type = parts[0]->type;
    q->cols = parts[0]->cols;
    for (const quant::QTensor* t : parts) {
      if (t->type != q->type || t->cols != q->cols) return nullptr;
      q->rows += t->rows;
      q->data.insert(q->data.end(), t->data.begin(), t->data.end());
    }
    return q;
  };
  auto use = [&](LinearWeight& lw, const std::vector<std::string>& names) {
    auto q = fuse(names);
    if (!q) return;
    KILN_CHECK(q->rows == lw.out && q->cols == lw.in, "engine", "quantized ", names[0], " is (",
               q->rows, ", ", q->cols, ") but the model expects (", lw.out, ", ", lw.in,
               "): (OUT, IN) rows");
    lw.q = q.get();
    lw.f32 = nullptr;
    lw.layout = ops::WeightLayout::out_in;
    w.owned.push_back(std::move(q));
  };
  const bool llama = model.config().arch == Arch::llama;
  for (int l = 0; l < int(w.layers.size()); ++l) {
    LayerWeights& e = w.layers[l];
    if (llama) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      use(e.qkv, {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                  p + "self_attn.v_proj.weight"});
      use(e.o, {p + "self_attn.o_proj.weight"});
      for (int x = 0; x < int(e.expert_up.size()); ++x) {
        const std::string ex = p + "block_sparse_moe.experts." + std::to_string(x) + ".";
        use(e.expert_up[size_t(x)], {ex + "w1.weight", ex + "w3.weight"});
        use(e.expert_down[size_t(x)], {ex + "w2.weight"});
      }
      if (e.expert_up.empty()) {
        use(e.up, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"});
        use(e.down, {p + "mlp.down_proj.weight"});
      }
    } else {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      use(e.qkv, {p + "attn.c_attn.weight"});
      use(e.o, {p + "attn.c_proj.weight"});
      use(e.up, {p + "mlp.c_fc.weight"});
      use(e.down, {p + "mlp.c_proj.weight"});
    }
  }
  use(w.lm_head, {"lm_head.weight"});
  return w;
}

}  // namespace kiln

// The engine's forward pass on the CPU, both families: every row through each projection as one
// GEMM; attention reads each sequence's blocks of the paged KV cache in place.
#include <algorithm>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/infer/forward_pass.h"
#include "kiln/infer/paged_attention.h"
#include "kiln/model/block_spec.h"
#include "kiln/model/lora_linear.h"
#include "kiln/model/moe.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/attention.h"
#include "kiln/ops/elementwise.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/rope.h"

namespace kiln {

namespace {

namespace cpu = ops::cpu;

// Rows [begin, end) of a batch that attend the same way.
struct Segment {
  int begin, end;
  bool fresh;  // a sequence's first rows, positions 0..n-1: causal self-attention over them
};

// A prompt chunk that starts a sequence (nothing cached before it) is plain causal
// self-attention over its own rows, which the tiled flash kernel does with query tiles
// (ops/attention.h); every other row reads the paged cache, one query row at a time
// (paged_attention.h).
std::vector<Segment> attention_segments(const ForwardBatch& b) {
  const int N = int(b.ids.size());
  std::vector<Segment> segs;
  constexpr int kMinFresh = 16;  // below this the paged path is as fast
  for (int i = 0; i < N;) {
    int j = i + 1;
    if (b.pos[i] == 0) {
      while (j < N && b.seq[j] == b.seq[i] && b.pos[j] == b.pos[j - 1] + 1) ++j;
      if (j - i >= kMinFresh) {
        segs.push_back({i, j, true});
        i = j;
        continue;
      }
      j = i + 1;
    }
    if (!segs.empty() && !segs.back().fresh && segs.back().end == i) {
      segs.back().end = j;
    } else {
      segs.push_back({i, j, false});
    }
    i = j;
  }
  return segs;
}

class CpuForwardPass final : public ForwardPass {
 public:
  CpuForwardPass(const ModelConfig& cfg, ForwardWeights w, int max_ctx)
      : c_(cfg), spec_(block_spec(cfg)), w_(std::move(w)) {
    KILN_CHECK(int(w_.layers.size()) == cfg.layers, "engine", "weights have ", w_.layers.size(),
               " layers but the config says ", cfg.layers);
    if (spec_.positions == PositionKind::rope) {
      const int D = cfg.head_dim;
      std::vector<float> inv(D / 2);
      ops::rope_inv_freq(inv.data(), D, cfg.rope_theta, cfg.rope_scaling, max_ctx);
      rope_cos_.resize(size_t(max_ctx) * D / 2);
      rope_sin_.resize(size_t(max_ctx) * D / 2);
      ops::rope_table(rope_cos_.data(), rope_sin_.data(), inv.data(), max_ctx, D);
    }
  }

  void forward(const ForwardBatch& b, KvCache& cache, std::vector<float>& logits) override;

 private:
  // Every projection of layer l goes through here: the base's GEMM over all rows, then each
  // adapter's s (x A^T) B^T over its rows (the same term training adds, model/lora_linear.h),
  // once for every family and weight type.
  void project(float* y, const float* x, const LinearWeight& w, const ForwardBatch& b, int l,
               LoraSite site);
  // Attention of layer l: q|k|v (N, QKV) -> K/V into the cache, att (N, H*D).
  void attention(int l, const ForwardBatch& b, const std::vector<Segment>& segs,
                 const std::vector<PagedRow>& rows, KvCache& cache);
  // The block's MLP, ln_ (N, C) -> x_ (N, C); a Mixtral layer's goes to moe_mlp.
  void mlp(const LayerWeights& p, const ForwardBatch& b, int l);
  // The router picks each row's experts (model/moe.h, dropless); the rows are permuted by expert
  // and each expert's rows go through its up/act/down as one GEMM each, then are summed back
  // into their rows with the routing weights.
  void moe_mlp(const LayerWeights& p, int N);

  ModelConfig c_;
  BlockSpec spec_;
  ForwardWeights w_;
  std::vector<float> rope_cos_, rope_sin_;  // (max_ctx, D/2), RoPE only
  // Scratch, grown to the largest batch.
  std::vector<float> x_, ln_, qkv_, att_, mid_, up_, act_, mean_, rstd_, hid_, lse_;
  std::vector<float> router_, moe_x_, moe_y_;  // MoE: logits (N, E); permuted rows (N*k, C)
  MoeRouting route_;
  // The batch's rows by LoRA adapter (Punica's segments: each adapter's rows in one GEMM pair,
  // however the engine interleaved them), and scratch for gathering them.
  struct AdapterRows {
    const LoraWeights* adapter;
    std::vector<int> rows;  // ascending
  };
  std::vector<AdapterRows> adapter_rows_;
  std::vector<float> lora_x_, lora_y_;
  LoraScratch lora_;
};

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

void CpuForwardPass::attention(int l, const ForwardBatch& b, const std::vector<Segment>& segs,
                               const std::vector<PagedRow>& rows, KvCache& cache) {
  const int N = int(b.ids.size()), D = c_.head_dim, H = c_.heads, K = c_.kv_heads;
  const int HD = H * D, KD = K * D, QKV = HD + 2 * KD;
  if (spec_.positions == PositionKind::rope)
    cpu::rope_forward(qkv_.data(), N, H + K, D, QKV, b.pos.data(), rope_cos_.data(),
                      rope_sin_.data());
  for (int i = 0; i < N; ++i) {
    const auto [blk, off] = cache.slot(b.seq[i], b.pos[i]);
    std::memcpy(cache.k(blk, l) + size_t(off) * KD, &qkv_[size_t(i) * QKV + HD],
                KD * sizeof(float));
    std::memcpy(cache.v(blk, l) + size_t(off) * KD, &qkv_[size_t(i) * QKV + HD + KD],
                KD * sizeof(float));
  }
  for (const Segment& sg : segs) {
    const int n = sg.end - sg.begin;
    if (sg.fresh) {
      grow(lse_, size_t(H) * n);
      cpu::attention_forward(&att_[size_t(sg.begin) * HD], lse_.data(),
                             &qkv_[size_t(sg.begin) * QKV], 1, n, H, K, D);
    } else {
      paged_attention(&att_[size_t(sg.begin) * HD], &qkv_[size_t(sg.begin) * QKV], QKV, cache, l,
                      rows.data() + sg.begin, n, H, K, D);
    }
  }
}

void CpuForwardPass::project(float* y, const float* x, const LinearWeight& w, const ForwardBatch& b,
                             int l, LoraSite site) {
  linear(y, x, w, int(b.ids.size()));
  for (const AdapterRows& g : adapter_rows_) {
    const std::vector<LoraSlot>& slots = g.adapter->slots(l);
    if (std::none_of(slots.begin(), slots.end(), [&](const LoraSlot& s) { return s.site == site; }))
      continue;  // the adapter leaves this projection alone
    const LoraConfig& lc = g.adapter->config();
    const LoraTerm t{g.adapter->weights().f32(), nullptr, lc.r, lc.scaling(), 0.0f, 0};
    const int n = int(g.rows.size()), in = w.in, out = w.out;
    // Its rows side by side (gathered unless they already are), so each term is one GEMM pair.
    const bool together = g.rows.back() - g.rows.front() == n - 1;
    const float* xs = x + size_t(g.rows.front()) * in;
    float* ys = y + size_t(g.rows.front()) * out;
    if (!together) {
      grow(lora_x_, size_t(n) * in);
      grow(lora_y_, size_t(n) * out);
      for (int i = 0; i < n; ++i) {
        std::memcpy(&lora_x_[size_t(i) * in], x + size_t(g.rows[i]) * in, in * sizeof(float));
        std::memcpy(&lora_y_[size_t(i) * out], y + size_t(g.rows[i]) * out, out * sizeof(float));
      }
      xs = lora_x_.data();
      ys = lora_y_.data();
    }
    for (const LoraSlot& slot : slots)
      if (slot.site == site) lora_forward(slot, t, xs, n, ys, out, lora_);
    if (!together)
      for (int i = 0; i < n; ++i)
        std::memcpy(y + size_t(g.rows[i]) * out, &lora_y_[size_t(i) * out], out * sizeof(float));
  }
}

void CpuForwardPass::moe_mlp(const LayerWeights& p, int N) {
  const int C = c_.hidden, F = c_.intermediate, E = c_.moe.experts, k = c_.moe.experts_per_tok;
  grow(router_, size_t(N) * E);
  cpu::gemm(router_.data(), ln_.data(), p.router, N, E, C, false, true, 1.0f, 0.0f);
  moe_route(route_, router_.data(), N, E, k, 0.0f);  // inference is dropless
  const int M = route_.rows();
  grow(moe_x_, size_t(M) * C);
  grow(moe_y_, size_t(M) * C);
  grow(up_, size_t(M) * 2 * F);
  grow(act_, size_t(M) * F);
  for (int i = 0; i < M; ++i)
    std::memcpy(&moe_x_[size_t(i) * C], &ln_[size_t(route_.source[size_t(i)] / k) * C],
                C * sizeof(float));
  for (int e = 0; e < E; ++e) {
    const int r0 = route_.offsets[size_t(e)], n = route_.offsets[size_t(e) + 1] - r0;
    if (n == 0) continue;
    linear(&up_[size_t(r0) * 2 * F], &moe_x_[size_t(r0) * C], p.expert_up[size_t(e)], n);
    cpu::swiglu_forward(&act_[size_t(r0) * F], &up_[size_t(r0) * 2 * F], n, F);
    linear(&moe_y_[size_t(r0) * C], &act_[size_t(r0) * F], p.expert_down[size_t(e)], n);
  }
  std::fill(x_.begin(), x_.begin() + size_t(N) * C, 0.0f);
  for (int i = 0; i < M; ++i) {
    const int pair = route_.source[size_t(i)];
    const float w = route_.weight[size_t(pair)];
    float* x = &x_[size_t(pair / k) * C];
    const float* y = &moe_y_[size_t(i) * C];
    for (int j = 0; j < C; ++j) x[j] += w * y[j];
  }
}

void CpuForwardPass::mlp(const LayerWeights& p, const ForwardBatch& b, int l) {
  const int N = int(b.ids.size());
  if (p.router) {
    moe_mlp(p, N);
    return;
  }
  project(up_.data(), ln_.data(), p.up, b, l, LoraSite::up);
  cpu_block_activation(spec_, act_.data(), up_.data(), N, c_.intermediate);
  project(x_.data(), act_.data(), p.down, b, l, LoraSite::down);
}

void CpuForwardPass::forward(const ForwardBatch& b, KvCache& cache, std::vector<float>& logits) {
  const int N = int(b.ids.size()), M = int(b.logit_rows.size());
  KILN_DCHECK(int(b.pos.size()) == N && int(b.seq.size()) == N);
  const int C = c_.hidden, F = c_.intermediate, D = c_.head_dim, H = c_.heads, K = c_.kv_heads;
  const int HD = H * D, QKV = HD + 2 * K * D;
  const float eps = c_.norm_eps;
  grow(x_, size_t(N) * C);
  grow(ln_, size_t(N) * C);
  grow(mid_, size_t(N) * C);
  grow(mean_, size_t(std::max(N, M)));
  grow(rstd_, size_t(std::max(N, M)));
  grow(qkv_, size_t(N) * QKV);
  grow(att_, size_t(N) * HD);
  grow(up_, size_t(N) * spec_.up_width);
  grow(act_, size_t(N) * F);
  std::vector<PagedRow> rows(N);
  for (int i = 0; i < N; ++i) rows[i] = {cache.block_table(b.seq[i]).data(), b.pos[i]};
  const std::vector<Segment> segs = attention_segments(b);
  adapter_rows_.clear();
  for (int i = 0; i < int(b.adapter.size()); ++i) {
    if (!b.adapter[i]) continue;
    auto g = std::find_if(adapter_rows_.begin(), adapter_rows_.end(),
                          [&](const AdapterRows& r) { return r.adapter == b.adapter[i]; });
    if (g == adapter_rows_.end()) g = adapter_rows_.insert(g, {b.adapter[i], {}});
    g->rows.push_back(i);
  }

  cpu::embedding_forward(x_.data(), b.ids.data(), w_.embed, N, C, false);
  if (spec_.positions == PositionKind::learned)
    cpu::embedding_forward(x_.data(), b.pos.data(), w_.pos_embed, N, C, true);
  for (int l = 0; l < c_.layers; ++l) {
    const LayerWeights& p = w_.layers[l];
    cpu_block_norm(spec_, ln_.data(), mean_.data(), rstd_.data(), x_.data(), p.ln1, p.ln1_b, N, C,
                   eps);
    project(qkv_.data(), ln_.data(), p.qkv, b, l, LoraSite::qkv);
    attention(l, b, segs, rows, cache);
    project(mid_.data(), att_.data(), p.o, b, l, LoraSite::o);
    cpu::add(mid_.data(), mid_.data(), x_.data(), int64_t(N) * C);
    cpu_block_norm(spec_, ln_.data(), mean_.data(), rstd_.data(), mid_.data(), p.ln2, p.ln2_b, N, C,
                   eps);
    mlp(p, b, l);
    cpu::add(x_.data(), x_.data(), mid_.data(), int64_t(N) * C);
  }
  // Only the rows that sample need the final norm and the LM head.
  grow(hid_, size_t(M) * C);
  for (int i = 0; i < M; ++i)
    std::memcpy(&hid_[size_t(i) * C], &x_[size_t(b.logit_rows[i]) * C], C * sizeof(float));
  cpu_block_norm(spec_, ln_.data(), mean_.data(), rstd_.data(), hid_.data(), w_.norm_f, w_.norm_f_b,
                 M, C, eps);
  logits.resize(size_t(M) * c_.vocab_size);
  linear(logits.data(), ln_.data(), w_.lm_head, M);  // the head is never adapted
}

}  // namespace

std::unique_ptr<ForwardPass> make_cpu_forward_pass(const ModelConfig& cfg, ForwardWeights w,
                                                   int max_ctx) {
  return std::make_unique<CpuForwardPass>(cfg, std::move(w), max_ctx);
}

}  // namespace kiln

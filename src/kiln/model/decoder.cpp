#include "kiln/model/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/elementwise.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/layer_norm.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/rms_norm.h"
#include "kiln/ops/rope.h"

namespace kiln {

namespace cpu = ops::cpu;
using ops::WeightLayout;

Decoder::Decoder(const Model& model, int max_len) : model_(model) {
  const ModelConfig& c = model.config();
  max_len_ = std::min(max_len, c.max_positions);
  const int64_t KD = int64_t(c.kv_heads) * c.head_dim;
  k_cache_ = Tensor::zeros({int64_t(c.layers), int64_t(max_len_), KD});
  v_cache_ = Tensor::zeros({int64_t(c.layers), int64_t(max_len_), KD});
  if (c.arch == Arch::llama) {
    std::vector<float> inv_freq(c.head_dim / 2);
    ops::rope_inv_freq(inv_freq.data(), c.head_dim, c.rope_theta, c.rope_scaling, max_len_);
    rope_cos_ = Tensor::empty({int64_t(max_len_), c.head_dim / 2});
    rope_sin_ = Tensor::empty({int64_t(max_len_), c.head_dim / 2});
    ops::rope_table(rope_cos_.f32(), rope_sin_.f32(), inv_freq.data(), max_len_, c.head_dim);
  }
  logits_.resize(c.vocab_size);
}

void Decoder::moe_mlp(float* out, const float* ln, const LayerParams& p, int n) const {
  const ModelConfig& c = model_.config();
  const int C = c.hidden, F = c.intermediate, E = c.moe.experts, k = c.moe.experts_per_tok;
  std::vector<float> prob(E), up(2 * F), act(F), y(C);
  for (int t = 0; t < n; ++t) {
    const float* h = ln + int64_t(t) * C;
    float* o = out + int64_t(t) * C;
    std::fill(o, o + C, 0.0f);
    cpu::linear_forward(prob.data(), h, p.router_w, nullptr, 1, C, E, WeightLayout::out_in);
    const float mx = *std::max_element(prob.begin(), prob.end());
    float sum = 0;
    for (float& z : prob) sum += (z = std::exp(z - mx));
    for (float& z : prob) z /= sum;
    // The k largest by repeated arg-max; then their probabilities over their sum.
    std::vector<int> chosen;
    std::vector<bool> taken(E, false);
    float kept = 0;
    for (int j = 0; j < k; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e)
        if (!taken[e] && (best < 0 || prob[e] > prob[best])) best = e;
      taken[best] = true;
      chosen.push_back(best);
      kept += prob[best];
    }
    for (int e : chosen) {
      cpu::linear_forward(up.data(), h, p.up_w + int64_t(e) * 2 * F * C, nullptr, 1, C, 2 * F,
                          WeightLayout::out_in);
      cpu::swiglu_forward(act.data(), up.data(), 1, F);
      cpu::linear_forward(y.data(), act.data(), p.down_w + int64_t(e) * C * F, nullptr, 1, F, C,
                          WeightLayout::out_in);
      const float w = prob[e] / kept;
      for (int i = 0; i < C; ++i) o[i] += w * y[i];
    }
  }
}

const std::vector<float>& Decoder::feed(const std::vector<int>& tokens) {
  const ModelConfig& c = model_.config();
  const int n = int(tokens.size());
  KILN_CHECK(n > 0, "decode", "nothing to feed: the token list is empty");
  KILN_CHECK(pos_ + n <= max_len_, "decode", "context of ", pos_ + n,
             " tokens exceeds the maximum of ", max_len_,
             "; shorten the prompt or lower --max-new-tokens");
  for (int t : tokens)
    KILN_CHECK(t >= 0 && t < c.vocab_size, "decode", "token id ", t, " is outside the vocabulary");
  const int C = c.hidden, F = c.intermediate, D = c.head_dim, H = c.heads, K = c.kv_heads;
  const int HD = H * D, KD = K * D, QKV = HD + 2 * KD, group = H / K;
  const bool llama = c.arch == Arch::llama;
  const WeightLayout layout = llama ? WeightLayout::out_in : WeightLayout::in_out;
  ModelParams w = model_.bind(const_cast<float*>(model_.weights().f32()));

  std::vector<int> pos(n);
  for (int i = 0; i < n; ++i) pos[i] = pos_ + i;
  std::vector<float> x(size_t(n) * C), ln(size_t(n) * C), mean(n), rstd(n), qkv(size_t(n) * QKV),
      att(size_t(n) * HD), mid(size_t(n) * C), up(size_t(n) * (llama ? 2 * F : F)),
      act(size_t(n) * F);
  cpu::embedding_forward(x.data(), tokens.data(), w.wte, n, C, false);
  if (!llama) cpu::embedding_forward(x.data(), pos.data(), w.wpe, n, C, true);

  const float scale = 1.0f / std::sqrt(float(D));
  for (int l = 0; l < c.layers; ++l) {
    const LayerParams& p = w.layers[l];
    if (llama) {
      cpu::rms_norm_forward(ln.data(), rstd.data(), x.data(), p.ln1_w, n, C, c.norm_eps);
    } else {
      cpu::layer_norm_forward(ln.data(), mean.data(), rstd.data(), x.data(), p.ln1_w, p.ln1_b, n, C,
                              c.norm_eps);
    }
    cpu::linear_forward(qkv.data(), ln.data(), p.qkv_w, p.qkv_b, n, C, QKV, layout);
    if (llama) {
      cpu::rope_forward(qkv.data(), n, H + K, D, QKV, pos.data(), rope_cos_.f32(), rope_sin_.f32());
    }
    float* kc = k_cache_.f32() + int64_t(l) * max_len_ * KD;
    float* vc = v_cache_.f32() + int64_t(l) * max_len_ * KD;
    for (int i = 0; i < n; ++i) {
      std::memcpy(kc + int64_t(pos[i]) * KD, &qkv[size_t(i) * QKV + HD], KD * sizeof(float));
      std::memcpy(vc + int64_t(pos[i]) * KD, &qkv[size_t(i) * QKV + HD + KD], KD * sizeof(float));
    }
    // Each (query, head) attends to cached positions 0..pos[i]; one softmax row at a time.
    parallel_for(int64_t(n) * H, [&](int64_t task) {
      const int i = int(task / H), h = int(task % H), kvh = h / group, len = pos[i] + 1;
      const float* q = &qkv[size_t(i) * QKV + size_t(h) * D];
      std::vector<float> s(len);
      float mx = -INFINITY;
      for (int j = 0; j < len; ++j) {
        const float* k = kc + int64_t(j) * KD + kvh * D;
        float dot = 0;
        for (int d = 0; d < D; ++d) dot += q[d] * k[d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      float sum = 0;
      for (int j = 0; j < len; ++j) sum += (s[j] = std::exp(s[j] - mx));
      float* o = &att[size_t(i) * HD + size_t(h) * D];
      std::fill(o, o + D, 0.0f);
      for (int j = 0; j < len; ++j) {
        const float* v = vc + int64_t(j) * KD + kvh * D;
        const float pj = s[j] / sum;
        for (int d = 0; d < D; ++d) o[d] += pj * v[d];
      }
    });
    cpu::linear_forward(mid.data(), att.data(), p.o_w, p.o_b, n, HD, C, layout);
    cpu::add(mid.data(), mid.data(), x.data(), int64_t(n) * C);
    if (c.moe.enabled()) {
      cpu::rms_norm_forward(ln.data(), rstd.data(), mid.data(), p.ln2_w, n, C, c.norm_eps);
      moe_mlp(x.data(), ln.data(), p, n);
      cpu::add(x.data(), x.data(), mid.data(), int64_t(n) * C);
      continue;
    }
    if (llama) {
      cpu::rms_norm_forward(ln.data(), rstd.data(), mid.data(), p.ln2_w, n, C, c.norm_eps);
      cpu::linear_forward(up.data(), ln.data(), p.up_w, nullptr, n, C, 2 * F, layout);
      cpu::swiglu_forward(act.data(), up.data(), n, F);
    } else {
      cpu::layer_norm_forward(ln.data(), mean.data(), rstd.data(), mid.data(), p.ln2_w, p.ln2_b, n,
                              C, c.norm_eps);
      cpu::linear_forward(up.data(), ln.data(), p.up_w, p.up_b, n, C, F, layout);
      cpu::gelu_forward(act.data(), up.data(), int64_t(n) * F);
    }
    cpu::linear_forward(x.data(), act.data(), p.down_w, p.down_b, n, F, C, layout);
    cpu::add(x.data(), x.data(), mid.data(), int64_t(n) * C);
  }
  // Only the last position's logits are needed.
  const float* last = &x[size_t(n - 1) * C];
  if (llama) {
    cpu::rms_norm_forward(ln.data(), rstd.data(), last, w.lnf_w, 1, C, c.norm_eps);
  } else {
    cpu::layer_norm_forward(ln.data(), mean.data(), rstd.data(), last, w.lnf_w, w.lnf_b, 1, C,
                            c.norm_eps);
  }
  cpu::linear_forward(logits_.data(), ln.data(), w.lm_head, nullptr, 1, C, c.vocab_size,
                      WeightLayout::out_in);
  pos_ += n;
  return logits_;
}

}  // namespace kiln

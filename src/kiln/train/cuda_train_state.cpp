#include "kiln/train/cuda_train_state.h"

#include "kiln/core/error.h"

#ifdef KILN_HAVE_CUDA

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kiln/cuda/attention.h"
#include "kiln/cuda/cross_entropy.h"
#include "kiln/cuda/gemm.h"
#include "kiln/cuda/kernels.h"
#include "kiln/cuda/runtime.h"
#include "kiln/model/cuda_model.h"

namespace kiln {

using cuda::DeviceBuffer;
using ops::WeightLayout;

struct CudaTrainState::Impl {
  virtual ~Impl() = default;
  virtual double step(const int* ids, const int* targets, bool backward, float grad_scale) = 0;
  // One fused AdamW launch on the gradients times grad_mul (the clipping factor).
  virtual void adamw_step(float lr, float grad_mul) = 0;
  virtual size_t activation_bytes() const = 0;

  // What does not depend on the activation type.
  Impl(const Model& model, int B, int T, bool bf16, const AdamWConfig& adamw)
      : cfg(model.config()),
        B(B),
        T(T),
        N(B * T),
        adamw(adamw),
        s(cuda::streams().compute),
        weights(model, bf16, s),
        wp(weights.wp),
        rope(cfg, T, s) {
    const int64_t P = model.num_params();
    auto segs_host = std::vector<cuda::AdamWSegment>();
    for (const ParamInfo& p : model.params()) segs_host.push_back({p.offset, p.numel(), p.decay});
    segs = std::make_unique<cuda::AdamWSegments>(segs_host.data(), int(segs_host.size()), s);
    g = DeviceBuffer<float>(P, "gradients", s);
    m = DeviceBuffer<float>(P, "adamw m", s);
    v = DeviceBuffer<float>(P, "adamw v", s);
    cuda::fill_zero(g.data(), g.bytes(), s);
    cuda::fill_zero(m.data(), m.bytes(), s);
    cuda::fill_zero(v.data(), v.bytes(), s);
    gp = model.bind(g.data());
    ids = DeviceBuffer<int>(N, "ids", s);
    targets = DeviceBuffer<int>(N, "targets", s);
    pos = DeviceBuffer<int>(N, "positions", s);
    losses_dev = DeviceBuffer<float>(N, "losses", s);
    norm_dev = DeviceBuffer<double>(1, "grad norm", s);
    std::vector<int> p(N);
    for (int n = 0; n < N; ++n) p[n] = n % T;
    cuda::to_device(pos.data(), p.data(), size_t(N) * 4, s);
    losses.assign(size_t(N), 0.0f);
  }

  ModelConfig cfg;
  int B, T, N;
  AdamWConfig adamw;
  cudaStream_t s;
  int64_t opt_steps = 0, counted = 0;
  std::unique_ptr<cuda::AdamWSegments> segs;
  DeviceWeights weights;  // fp32 master weights and, in bf16, the GEMMs' copy
  const ModelParams& wp;  // named device pointers into the weights ...
  DeviceRope rope;
  DeviceBuffer<float> g, m, v;
  ModelParams gp;  // ... and into the gradients
  DeviceBuffer<int> ids, targets, pos;
  DeviceBuffer<float> losses_dev;
  DeviceBuffer<double> norm_dev;
  std::vector<float> losses;
};

namespace {

// The step for activation type Act (float or bf16).
template <typename Act>
struct StateT final : CudaTrainState::Impl {
  struct Layer {
    DeviceBuffer<Act> x_in, ln1, qkv, att, x_mid, ln2, up, act;
    DeviceBuffer<float> lse, mean1, rstd1, mean2, rstd2;
  };
  static constexpr bool kBf16 = std::is_same_v<Act, cuda::bf16>;
  int C, F, D, H, K, HD, QKV, UP;
  bool llama;
  WeightLayout layout;
  std::vector<Layer> acts;
  DeviceBuffer<Act> x_out, lnf, dlnf, dres, dln, datt, dqkv, dup, dact, tmp;
  DeviceBuffer<float> meanf, rstdf;

  StateT(const Model& model, int B_, int T_, const AdamWConfig& a) : Impl(model, B_, T_, kBf16, a) {
    C = cfg.hidden, F = cfg.intermediate, D = cfg.head_dim, H = cfg.heads, K = cfg.kv_heads;
    HD = H * D, QKV = (H + 2 * K) * D;
    llama = cfg.arch == Arch::llama;
    UP = llama ? 2 * F : F;
    layout = llama ? WeightLayout::out_in : WeightLayout::in_out;
    const int64_t n = N;
    acts.resize(cfg.layers);
    for (Layer& L : acts) {
      L.x_in = DeviceBuffer<Act>(n * C, "activations", s);
      L.ln1 = DeviceBuffer<Act>(n * C, "activations", s);
      L.qkv = DeviceBuffer<Act>(n * QKV, "activations", s);
      L.att = DeviceBuffer<Act>(n * HD, "activations", s);
      L.x_mid = DeviceBuffer<Act>(n * C, "activations", s);
      L.ln2 = DeviceBuffer<Act>(n * C, "activations", s);
      L.up = DeviceBuffer<Act>(n * UP, "activations", s);
      L.act = DeviceBuffer<Act>(n * F, "activations", s);
      L.lse = DeviceBuffer<float>(int64_t(B) * H * T, "activations", s);
      L.rstd1 = DeviceBuffer<float>(n, "activations", s);
      L.rstd2 = DeviceBuffer<float>(n, "activations", s);
      if (!llama) {
        L.mean1 = DeviceBuffer<float>(n, "activations", s);
        L.mean2 = DeviceBuffer<float>(n, "activations", s);
      }
    }
    for (auto* b : {&x_out, &lnf, &dlnf, &dres, &dln, &tmp})
      *b = DeviceBuffer<Act>(n * C, "scratch", s);
    datt = DeviceBuffer<Act>(n * HD, "scratch", s);
    dqkv = DeviceBuffer<Act>(n * QKV, "scratch", s);
    dup = DeviceBuffer<Act>(n * UP, "scratch", s);
    dact = DeviceBuffer<Act>(n * F, "scratch", s);
    rstdf = DeviceBuffer<float>(n, "scratch", s);
    if (!llama) meanf = DeviceBuffer<float>(n, "scratch", s);
  }

  const Act* wt(const float* p) const { return weights.gemm<Act>(p); }

  void norm_forward(Act* out, float* mean, float* rstd, const Act* x, const float* nw,
                    const float* nb) {
    kiln::norm_forward<Act>(cfg, out, mean, rstd, x, nw, nb, N, s);
  }
  void norm_backward(Act* dx, float* dw, float* db, const Act* dout, const Act* x, const float* nw,
                     const float* mean, const float* rstd) {
    if (llama) {
      cuda::rms_norm_backward<Act>(dx, dw, dout, x, nw, rstd, N, C, s);
    } else {
      cuda::layer_norm_backward<Act>(dx, dw, db, dout, x, nw, mean, rstd, N, C, s);
    }
  }

  void forward_layer(const LayerParams& p, Layer& a, Act* x_next) {
    norm_forward(a.ln1.data(), a.mean1.data(), a.rstd1.data(), a.x_in.data(), p.ln1_w, p.ln1_b);
    cuda::linear_forward<Act>(a.qkv.data(), a.ln1.data(), wt(p.qkv_w), p.qkv_b, N, C, QKV, layout,
                              s);
    if (llama)
      cuda::rope_forward<Act>(a.qkv.data(), N, H + K, D, QKV, pos.data(), rope.cos.data(),
                              rope.sin.data(), s);
    cuda::attention_forward<Act>(a.att.data(), a.lse.data(), a.qkv.data(), B, T, H, K, D, s);
    cuda::linear_forward<Act>(tmp.data(), a.att.data(), wt(p.o_w), p.o_b, N, HD, C, layout, s);
    cuda::add<Act>(a.x_mid.data(), tmp.data(), a.x_in.data(), int64_t(N) * C, s);
    norm_forward(a.ln2.data(), a.mean2.data(), a.rstd2.data(), a.x_mid.data(), p.ln2_w, p.ln2_b);
    if (llama) {
      cuda::linear_forward<Act>(a.up.data(), a.ln2.data(), wt(p.up_w), nullptr, N, C, 2 * F, layout,
                                s);
      cuda::swiglu_forward<Act>(a.act.data(), a.up.data(), N, F, s);
    } else {  // GELU fused into the GEMM's epilogue; the pre-activation kept for backward
      cuda::linear_forward<Act>(a.act.data(), a.ln2.data(), wt(p.up_w), p.up_b, N, C, F, layout, s,
                                true, a.up.data());
    }
    cuda::linear_forward<Act>(tmp.data(), a.act.data(), wt(p.down_w), p.down_b, N, F, C, layout, s);
    cuda::add<Act>(x_next, tmp.data(), a.x_mid.data(), int64_t(N) * C, s);
  }

  // dres holds d x_next on entry and d x_in on return.
  void backward_layer(const LayerParams& p, const LayerParams& gl, Layer& a) {
    cuda::linear_backward<Act>(dact.data(), gl.down_w, gl.down_b, dres.data(), a.act.data(),
                               wt(p.down_w), N, F, C, layout, s);
    if (llama) {
      cuda::swiglu_backward<Act>(dup.data(), dact.data(), a.up.data(), N, F, s);
    } else {
      cuda::gelu_backward<Act>(dup.data(), dact.data(), a.up.data(), int64_t(N) * F, s);
    }
    cuda::linear_backward<Act>(dln.data(), gl.up_w, gl.up_b, dup.data(), a.ln2.data(), wt(p.up_w),
                               N, C, UP, layout, s);
    norm_backward(dres.data(), gl.ln2_w, gl.ln2_b, dln.data(), a.x_mid.data(), p.ln2_w,
                  a.mean2.data(), a.rstd2.data());
    cuda::linear_backward<Act>(datt.data(), gl.o_w, gl.o_b, dres.data(), a.att.data(), wt(p.o_w), N,
                               HD, C, layout, s);
    cuda::attention_backward<Act>(dqkv.data(), datt.data(), a.qkv.data(), a.att.data(),
                                  a.lse.data(), B, T, H, K, D, s);
    if (llama)
      cuda::rope_backward<Act>(dqkv.data(), N, H + K, D, QKV, pos.data(), rope.cos.data(),
                               rope.sin.data(), s);
    cuda::linear_backward<Act>(dln.data(), gl.qkv_w, gl.qkv_b, dqkv.data(), a.ln1.data(),
                               wt(p.qkv_w), N, C, QKV, layout, s);
    norm_backward(dres.data(), gl.ln1_w, gl.ln1_b, dln.data(), a.x_in.data(), p.ln1_w,
                  a.mean1.data(), a.rstd1.data());
  }

  double step(const int* ids_host, const int* targets_host, bool backward,
              float grad_scale) override {
    cuda::to_device(ids.data(), ids_host, size_t(N) * 4, s, "upload ids");
    counted = 0;
    if (targets_host) {
      cuda::to_device(targets.data(), targets_host, size_t(N) * 4, s, "upload targets");
      for (int n = 0; n < N; ++n) counted += targets_host[n] >= 0;
    }
    // Forward.
    Act* x0 = acts[0].x_in.data();
    cuda::embedding_forward<Act>(x0, ids.data(), wp.wte, N, C, false, s);
    if (!llama) cuda::embedding_forward<Act>(x0, pos.data(), wp.wpe, N, C, true, s);
    for (int l = 0; l < cfg.layers; ++l)
      forward_layer(wp.layers[l], acts[l],
                    l + 1 < cfg.layers ? acts[l + 1].x_in.data() : x_out.data());
    norm_forward(lnf.data(), meanf.data(), rstdf.data(), x_out.data(), wp.lnf_w, wp.lnf_b);
    if (!targets_host) {
      KILN_CUDA("train step", cudaStreamSynchronize(s));
      return 0;
    }
    const bool bwd = backward;
    const float scale = grad_scale / float(std::max<int64_t>(counted, 1));
    cuda::lm_head_cross_entropy<Act>(losses_dev.data(), bwd ? dlnf.data() : nullptr,
                                     bwd ? gp.lm_head : nullptr, lnf.data(), wt(wp.lm_head),
                                     targets.data(), N, C, cfg.vocab_size, scale, s);
    if (bwd) {
      cuda::fill_zero(dres.data(), dres.bytes(), s);
      norm_backward(dres.data(), gp.lnf_w, gp.lnf_b, dlnf.data(), x_out.data(), wp.lnf_w,
                    meanf.data(), rstdf.data());
      for (int l = cfg.layers - 1; l >= 0; --l) backward_layer(wp.layers[l], gp.layers[l], acts[l]);
      cuda::embedding_backward<Act>(gp.wte, dres.data(), ids.data(), N, C, s);
      if (!llama) cuda::embedding_backward<Act>(gp.wpe, dres.data(), pos.data(), N, C, s);
    }
    cuda::to_host(losses.data(), losses_dev.data(), size_t(N) * 4, s, "download losses");
    double sum = 0;
    for (int n = 0; n < N; ++n)
      if (targets_host[n] >= 0) sum += losses[size_t(n)];
    return counted > 0 ? sum / double(counted) : 0.0;
  }

  void adamw_step(float lr, float mul) override {
    ++opt_steps;
    ops::AdamWParams hp = adamw_params(adamw, lr, true, opt_steps);  // decay per segment
    cuda::bf16* copy = weights.wb.size() > 0 ? weights.wb.data() : nullptr;
    cuda::adamw_step(weights.w.data(), g.data(), m.data(), v.data(), *segs, hp, mul, copy, s);
  }

  size_t activation_bytes() const override {
    size_t b = 0;
    for (const Layer& L : acts)
      b += L.x_in.bytes() + L.ln1.bytes() + L.qkv.bytes() + L.att.bytes() + L.x_mid.bytes() +
           L.ln2.bytes() + L.up.bytes() + L.act.bytes() + L.lse.bytes() + L.mean1.bytes() +
           L.rstd1.bytes() + L.mean2.bytes() + L.rstd2.bytes();
    for (auto* x : {&x_out, &lnf, &dlnf, &dres, &dln, &datt, &dqkv, &dup, &dact, &tmp})
      b += x->bytes();
    return b + meanf.bytes() + rstdf.bytes();
  }
};

}  // namespace

std::string cuda_device_name() {
  return cuda::available() ? cuda::device_description() : "";
}

CudaTrainState::CudaTrainState(const Model& model, int B, int T, Precision precision, bool tf32,
                               const AdamWConfig& adamw) {
  cuda::require("train");
  const ModelConfig& c = model.config();
  KILN_CHECK(
      model.stage().num_layers == c.layers && model.stage().has_embedding && model.stage().has_head,
      "train", "device: cuda trains a whole model (no pipeline stages)");
  KILN_CHECK(T <= c.max_positions, "train", "sequence length ", T,
             " exceeds the model's max_position_embeddings (", c.max_positions, ")");
  KILN_CHECK(!c.moe.enabled(), "train",
             "device: cuda does not train Mixture-of-Experts models yet; use device: cpu");
  KILN_CHECK(precision != Precision::fp16, "train",
             "train.precision = fp16 is not supported on device: cuda; use bf16 (same speed on "
             "tensor cores, no loss scaling) or fp32");
  cuda::set_tf32(tf32);
  if (precision == Precision::bf16) {
    impl_ = std::make_unique<StateT<cuda::bf16>>(model, B, T, adamw);
  } else {
    impl_ = std::make_unique<StateT<float>>(model, B, T, adamw);
  }
}

CudaTrainState::~CudaTrainState() = default;

double CudaTrainState::step(const int* ids, const int* targets, bool backward, float grad_scale) {
  return impl_->step(ids, targets, backward, grad_scale);
}
int64_t CudaTrainState::counted_tokens() const {
  return impl_->counted;
}
const std::vector<float>& CudaTrainState::token_losses() const {
  return impl_->losses;
}

void CudaTrainState::zero_grads() {
  cuda::fill_zero(impl_->g.data(), impl_->g.bytes(), impl_->s);
}

double CudaTrainState::grad_norm() {
  cuda::sum_squares(impl_->norm_dev.data(), impl_->g.data(), impl_->g.size(), impl_->s);
  double ss = 0;
  cuda::to_host(&ss, impl_->norm_dev.data(), sizeof ss, impl_->s, "grad norm");
  return std::sqrt(ss);
}

bool CudaTrainState::clip_and_step(float lr, float clip, double norm) {
  float mul = 1.0f;  // the clipping factor, folded into the AdamW launch
  return clip_and_update(
      norm, clip, [&](float s) { mul = s; }, [&] { impl_->adamw_step(lr, mul); });
}

void CudaTrainState::upload_optimizer(const AdamW& opt) {
  Impl& d = *impl_;
  cuda::to_device(d.m.data(), const_cast<AdamW&>(opt).m().f32(), d.m.bytes(), d.s, "upload adamw");
  cuda::to_device(d.v.data(), const_cast<AdamW&>(opt).v().f32(), d.v.bytes(), d.s, "upload adamw");
  d.opt_steps = opt.steps();
}

void CudaTrainState::download_weights(Model& model) const {
  cuda::to_host(model.weights().f32(), impl_->weights.w.data(), impl_->weights.w.bytes(), impl_->s,
                "download weights");
}

void CudaTrainState::download_grads(float* grads) const {
  cuda::to_host(grads, impl_->g.data(), impl_->g.bytes(), impl_->s, "download grads");
}

void CudaTrainState::download(Model& model, AdamW& opt) const {
  download_weights(model);
  cuda::to_host(opt.m().f32(), impl_->m.data(), impl_->m.bytes(), impl_->s, "download adamw");
  cuda::to_host(opt.v().f32(), impl_->v.data(), impl_->v.bytes(), impl_->s, "download adamw");
  opt.set_steps(impl_->opt_steps);
}

size_t CudaTrainState::state_bytes() const {
  const Impl& d = *impl_;
  return d.weights.bytes() + d.g.bytes() + d.m.bytes() + d.v.bytes();
}
size_t CudaTrainState::activation_bytes() const {
  return impl_->activation_bytes();
}

}  // namespace kiln

#else  // no CUDA backend: the constructor says so; nothing else can be reached

namespace kiln {

struct CudaTrainState::Impl {};

std::string cuda_device_name() {
  return "";
}

CudaTrainState::CudaTrainState(const Model&, int, int, Precision, bool, const AdamWConfig&) {
  fail("train",
       "device: cuda, but this kiln was built without the CUDA backend; install the CUDA toolkit "
       "and rebuild (bash scripts/build.sh -DKILN_CUDA=ON), or use device: cpu");
}
CudaTrainState::~CudaTrainState() = default;
double CudaTrainState::step(const int*, const int*, bool, float) {
  return 0;
}
int64_t CudaTrainState::counted_tokens() const {
  return 0;
}
const std::vector<float>& CudaTrainState::token_losses() const {
  static const std::vector<float> none;
  return none;
}
void CudaTrainState::zero_grads() {}
double CudaTrainState::grad_norm() {
  return 0;
}
bool CudaTrainState::clip_and_step(float, float, double) {
  return false;
}
void CudaTrainState::upload_optimizer(const AdamW&) {}
void CudaTrainState::download(Model&, AdamW&) const {}
void CudaTrainState::download_weights(Model&) const {}
void CudaTrainState::download_grads(float*) const {}
size_t CudaTrainState::state_bytes() const {
  return 0;
}
size_t CudaTrainState::activation_bytes() const {
  return 0;
}

}  // namespace kiln

#endif  // KILN_HAVE_CUDA

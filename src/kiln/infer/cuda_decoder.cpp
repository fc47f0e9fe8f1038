#include "kiln/infer/cuda_decoder.h"

#include "kiln/core/error.h"

#ifdef KILN_HAVE_CUDA

#include <type_traits>
#include <vector>

#include "kiln/cuda/attention.h"
#include "kiln/cuda/gemm.h"
#include "kiln/cuda/kernels.h"
#include "kiln/cuda/runtime.h"
#include "kiln/cuda/sampling.h"
#include "kiln/infer/cuda_model.h"
#include "kiln/infer/kv_cache.h"

namespace kiln {

static_assert(cuda::kPagedBlockTokens == kBlockTokens,
              "the device KV pool must use KvCache's block size");

using cuda::DeviceBuffer;

struct CudaDecoder::Impl {
  virtual ~Impl() = default;
  virtual void forward(const int* seq, const int* tokens, const int* pos, int N, int* next,
                       float* logits) = 0;
  int max_seqs = 0, max_len = 0, max_rows = 0;
  size_t bytes = 0;
};

namespace {

template <typename Act>
struct DecoderT final : CudaDecoder::Impl {
  static constexpr bool kBf16 = std::is_same_v<Act, cuda::bf16>;
  ModelConfig cfg;
  cudaStream_t s;
  int C, F, D, H, K, HD, QKV, UP, blocks_per_seq;
  bool llama;
  ops::WeightLayout layout;
  DeviceWeights weights;
  const ModelParams& wp;  // named device pointers into the weights
  DeviceRope rope;
  DeviceBuffer<float> lm_logits32;
  DeviceBuffer<Act> pool, x, ln, qkv, att, tmp, up, act, logits;
  DeviceBuffer<float> rstd, mean;  // norm statistics (inference keeps none; the kernels write them)
  DeviceBuffer<int> ints;          // per call: tokens | pos | slots | block tables, one upload
  DeviceBuffer<int> next_dev;
  std::vector<int> staging;

  DecoderT(const Model& model, int seqs, int len, int rows)
      : cfg(model.config()),
        s(cuda::streams().compute),
        weights(model, kBf16, s),
        wp(weights.wp),
        rope(cfg, len, s) {
    max_seqs = seqs, max_len = len, max_rows = std::max(rows, seqs);
    C = cfg.hidden, F = cfg.intermediate, D = cfg.head_dim, H = cfg.heads, K = cfg.kv_heads;
    HD = H * D, QKV = (H + 2 * K) * D;
    llama = cfg.arch == Arch::llama;
    UP = llama ? 2 * F : F;
    layout = llama ? ops::WeightLayout::out_in : ops::WeightLayout::in_out;
    blocks_per_seq = (max_len + kBlockTokens - 1) / kBlockTokens;
    const int64_t kv_dim = int64_t(K) * D;
    pool = DeviceBuffer<Act>(
        int64_t(max_seqs) * blocks_per_seq * cfg.layers * 2 * kBlockTokens * kv_dim, "kv cache", s);
    const int64_t R = max_rows;
    x = DeviceBuffer<Act>(R * C, "decoder", s);
    ln = DeviceBuffer<Act>(R * C, "decoder", s);
    tmp = DeviceBuffer<Act>(R * C, "decoder", s);
    qkv = DeviceBuffer<Act>(R * QKV, "decoder", s);
    att = DeviceBuffer<Act>(R * HD, "decoder", s);
    up = DeviceBuffer<Act>(R * UP, "decoder", s);
    act = DeviceBuffer<Act>(R * F, "decoder", s);
    logits = DeviceBuffer<Act>(R * cfg.vocab_size, "decoder logits", s);
    ints = DeviceBuffer<int>(R * (3 + blocks_per_seq), "decoder", s);
    next_dev = DeviceBuffer<int>(R, "decoder", s);
    rstd = DeviceBuffer<float>(R, "decoder", s);
    mean = DeviceBuffer<float>(R, "decoder", s);
    bytes = weights.bytes() + pool.bytes() + x.bytes() * 3 + qkv.bytes() + att.bytes() +
            up.bytes() + act.bytes() + logits.bytes();
  }

  const Act* wt(const float* p) const { return weights.gemm<Act>(p); }

  void norm(Act* out, const Act* in, const float* nw, const float* nb, int N) {
    norm_forward<Act>(cfg, out, mean.data(), rstd.data(), in, nw, nb, N, s);
  }

  void forward(const int* seq, const int* tokens, const int* pos, int N, int* next,
               float* logits_host) override {
    KILN_CHECK(N >= 1 && N <= max_rows, "cuda decoder", N, " rows in one call; at most ", max_rows);
    // One upload: tokens, positions, cache slots, and each row's block table.
    const int MB = blocks_per_seq;
    staging.resize(size_t(N) * (3 + MB));
    int* t = staging.data();
    int* p = t + N;
    int* slot = p + N;
    int* tables = slot + N;
    for (int n = 0; n < N; ++n) {
      KILN_CHECK(seq[n] >= 0 && seq[n] < max_seqs && pos[n] >= 0 && pos[n] < max_len,
                 "cuda decoder", "row ", n, ": sequence ", seq[n], " position ", pos[n],
                 " is outside the ", max_seqs, " x ", max_len, " cache");
      t[n] = tokens[n], p[n] = pos[n];
      const int first = seq[n] * MB;  // sequence s owns blocks s*MB .. s*MB+MB-1
      slot[n] = (first + pos[n] / kBlockTokens) * kBlockTokens + pos[n] % kBlockTokens;
      for (int b = 0; b < MB; ++b) tables[size_t(n) * MB + b] = first + b;
    }
    cuda::to_device(ints.data(), staging.data(), staging.size() * 4, s, "decoder inputs");
    const int* d_tok = ints.data();
    const int* d_pos = d_tok + N;
    const int* d_slot = d_pos + N;
    const int* d_tab = d_slot + N;

    cuda::DevicePagedCache<Act> cache{pool.data(), cfg.layers, K * D};
    cuda::embedding_forward<Act>(x.data(), d_tok, wp.wte, N, C, false, s);
    if (!llama) cuda::embedding_forward<Act>(x.data(), d_pos, wp.wpe, N, C, true, s);
    for (int l = 0; l < cfg.layers; ++l) {
      const LayerParams& L = wp.layers[l];
      norm(ln.data(), x.data(), L.ln1_w, L.ln1_b, N);
      cuda::linear_forward<Act>(qkv.data(), ln.data(), wt(L.qkv_w), L.qkv_b, N, C, QKV, layout, s);
      if (llama)
        cuda::rope_forward<Act>(qkv.data(), N, H + K, D, QKV, d_pos, rope.cos.data(),
                                rope.sin.data(), s);
      cuda::kv_cache_write<Act>(cache, l, qkv.data(), QKV, H, K, D, d_slot, N, s);
      cuda::paged_attention<Act>(att.data(), qkv.data(), QKV, cache, l, d_tab, MB, d_pos, N, H, K,
                                 D, s);
      cuda::linear_forward<Act>(tmp.data(), att.data(), wt(L.o_w), L.o_b, N, HD, C, layout, s);
      cuda::add<Act>(x.data(), x.data(), tmp.data(), int64_t(N) * C, s);
      norm(ln.data(), x.data(), L.ln2_w, L.ln2_b, N);
      if (llama) {
        cuda::linear_forward<Act>(up.data(), ln.data(), wt(L.up_w), nullptr, N, C, 2 * F, layout,
                                  s);
        cuda::swiglu_forward<Act>(act.data(), up.data(), N, F, s);
      } else {
        cuda::linear_forward<Act>(act.data(), ln.data(), wt(L.up_w), L.up_b, N, C, F, layout, s,
                                  true, up.data());
      }
      cuda::linear_forward<Act>(tmp.data(), act.data(), wt(L.down_w), L.down_b, N, F, C, layout, s);
      cuda::add<Act>(x.data(), x.data(), tmp.data(), int64_t(N) * C, s);
    }
    norm(ln.data(), x.data(), wp.lnf_w, wp.lnf_b, N);
    // logits (N, V) = lnf @ lm_head^T: lm_head is (V, C) like nn.Linear in both architectures.
    cuda::linear_forward<Act>(logits.data(), ln.data(), wt(wp.lm_head), nullptr, N, C,
                              cfg.vocab_size, ops::WeightLayout::out_in, s);
    cuda::argmax_rows<Act>(next_dev.data(), logits.data(), N, cfg.vocab_size, s);
    cuda::to_host(next, next_dev.data(), size_t(N) * 4, s, "decoder tokens");
    if (logits_host) {
      const int64_t n = int64_t(N) * cfg.vocab_size;
      if constexpr (kBf16) {
        if (lm_logits32.size() < n) lm_logits32 = DeviceBuffer<float>(n, "decoder logits", s);
        cuda::bf16_to_f32(lm_logits32.data(), logits.data(), n, s);
        cuda::to_host(logits_host, lm_logits32.data(), size_t(n) * 4, s, "decoder logits");
      } else {
        cuda::to_host(logits_host, logits.data(), size_t(n) * 4, s, "decoder logits");
      }
    }
  }
};

}  // namespace

CudaDecoder::CudaDecoder(const Model& model, int max_seqs, int max_len, int max_rows, bool bf16) {
  cuda::require("decoder");
  KILN_CHECK(max_seqs >= 1 && max_len >= 1 && max_len <= model.config().max_positions,
             "cuda decoder", "need max_seqs >= 1 and 1 <= max_len <= the model's context (",
             model.config().max_positions, "), got ", max_seqs, " and ", max_len);
  if (bf16) {
    impl_ = std::make_unique<DecoderT<cuda::bf16>>(model, max_seqs, max_len, max_rows);
  } else {
    impl_ = std::make_unique<DecoderT<float>>(model, max_seqs, max_len, max_rows);
  }
}
CudaDecoder::~CudaDecoder() = default;
void CudaDecoder::forward(const int* seq, const int* tokens, const int* pos, int N, int* next,
                          float* logits) {
  impl_->forward(seq, tokens, pos, N, next, logits);
}
int CudaDecoder::max_seqs() const {
  return impl_->max_seqs;
}
int CudaDecoder::max_len() const {
  return impl_->max_len;
}
size_t CudaDecoder::device_bytes() const {
  return impl_->bytes;
}

}  // namespace kiln

#else  // no CUDA backend

namespace kiln {

struct CudaDecoder::Impl {};
CudaDecoder::CudaDecoder(const Model&, int, int, int, bool) {
  fail("decoder",
       "--device cuda, but this kiln was built without the CUDA backend; install the CUDA "
       "toolkit and rebuild (bash scripts/build.sh -DKILN_CUDA=ON), or use the CPU");
}
CudaDecoder::~CudaDecoder() = default;
void CudaDecoder::forward(const int*, const int*, const int*, int, int*, float*) {}
int CudaDecoder::max_seqs() const {
  return 0;
}
int CudaDecoder::max_len() const {
  return 0;
}
size_t CudaDecoder::device_bytes() const {
  return 0;
}

}  // namespace kiln

#endif  // KILN_HAVE_CUDA

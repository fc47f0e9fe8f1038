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
#include "kiln/infer/kv_cache.h"
#include "kiln/model/block_spec.h"
#include "kiln/model/cuda_model.h"

namespace kiln {

static_assert(cuda::kPagedBlockTokens == kBlockTokens,
              "the device KV pool must use KvCache's block size");

using cuda::DeviceBuffer;

namespace {

// The pass with the GPU-only steps CudaDecoder needs: run() leaves every row's logits on the
// device; greedy() and copy_rows() bring back argmaxes or rows of them.
class CudaPass : public ForwardPass {
 public:
  virtual void run(const ForwardBatch& b, KvCache& cache) = 0;
  virtual void greedy(int N, int* next) = 0;                          // (N) argmax per row
  virtual void copy_rows(std::span<const int> rows, float* out) = 0;  // (M, V) fp32, host
  virtual size_t bytes() const = 0;
  void forward(const ForwardBatch& b, KvCache& cache, std::vector<float>& logits) override {
    KILN_CHECK(b.adapter.empty(), "engine",
               "LoRA adapters are served on the CPU for now; serve them with --device cpu");
    run(b, cache);
    logits.resize(b.logit_rows.size() * size_t(vocab_));
    copy_rows(b.logit_rows, logits.data());
  }
  bool uses_host_pool() const override { return false; }

 protected:
  int vocab_ = 0;
};

template <typename Act>
class CudaPassT final : public CudaPass {
 public:
  static constexpr bool kBf16 = std::is_same_v<Act, cuda::bf16>;

  CudaPassT(const Model& model, int max_ctx)
      : cfg(model.config()),
        spec(block_spec(cfg)),
        s(cuda::streams().compute),
        weights(model, kBf16, s),
        wp(weights.wp),
        rope(cfg, max_ctx, s) {
    vocab_ = cfg.vocab_size;
    C = cfg.hidden, F = cfg.intermediate, D = cfg.head_dim, H = cfg.heads, K = cfg.kv_heads;
    HD = H * D, QKV = (H + 2 * K) * D;
    MB = (max_ctx + kBlockTokens - 1) / kBlockTokens;
    block_elems = int64_t(cfg.layers) * 2 * kBlockTokens * K * D;
  }

  void run(const ForwardBatch& b, KvCache& cache) override;

  void greedy(int N, int* next) override {
    cuda::argmax_rows<Act>(next_dev.data(), logits.data(), N, cfg.vocab_size, s);
    cuda::to_host(next, next_dev.data(), size_t(N) * 4, s, "decoder tokens");
  }

  void copy_rows(std::span<const int> rows, float* out) override {
    const int M = int(rows.size()), V = cfg.vocab_size;
    if (M == 0) return;
    if (logits32.size() < int64_t(M) * V)
      logits32 = DeviceBuffer<float>(int64_t(M) * V, "logits", s);
    for (int i = 0; i < M; ++i) {
      const Act* src = logits.data() + size_t(rows[i]) * V;
      if constexpr (kBf16) {
        cuda::bf16_to_f32(logits32.data() + size_t(i) * V, src, V, s);
      } else {
        cuda::copy_async(logits32.data() + size_t(i) * V, src, size_t(V) * 4,
                         cudaMemcpyDeviceToDevice, s, "logits");
      }
    }
    cuda::to_host(out, logits32.data(), size_t(M) * V * 4, s, "logits");
  }

  void copy_block(int src, int dst) override {
    cuda::copy_async(pool.data() + dst * block_elems, pool.data() + src * block_elems,
                     size_t(block_elems) * sizeof(Act), cudaMemcpyDeviceToDevice, s,
                     "kv cache copy-on-write");
  }

  size_t bytes() const override {
    return weights.bytes() + pool.bytes() + x.bytes() * 3 + qkv.bytes() + att.bytes() + up.bytes() +
           act.bytes() + logits.bytes();
  }

 private:
  // Device buffers for N rows, and the K/V pool for the cache's blocks (grown, never shrunk).
  void reserve(int N, int blocks) {
    if (pool.size() < blocks * block_elems)
      pool = DeviceBuffer<Act>(blocks * block_elems, "kv cache", s);
    if (N <= rows) return;
    rows = N;
    const int64_t R = N;
    x = DeviceBuffer<Act>(R * C, "decoder", s);
    ln = DeviceBuffer<Act>(R * C, "decoder", s);
    tmp = DeviceBuffer<Act>(R * C, "decoder", s);
    qkv = DeviceBuffer<Act>(R * QKV, "decoder", s);
    att = DeviceBuffer<Act>(R * HD, "decoder", s);
    up = DeviceBuffer<Act>(R * spec.up_width, "decoder", s);
    act = DeviceBuffer<Act>(R * F, "decoder", s);
    logits = DeviceBuffer<Act>(R * cfg.vocab_size, "decoder logits", s);
    ints = DeviceBuffer<int>(R * (3 + MB), "decoder", s);
    next_dev = DeviceBuffer<int>(R, "decoder", s);
    rstd = DeviceBuffer<float>(R, "decoder", s);
    mean = DeviceBuffer<float>(R, "decoder", s);
  }
  const Act* wt(const float* p) const { return weights.gemm<Act>(p); }
  void norm(Act* out, const Act* in, const float* nw, const float* nb, int N) {
    if (spec.norm == NormKind::rms) {
      cuda::rms_norm_forward<Act>(out, rstd.data(), in, nw, N, C, cfg.norm_eps, s);
    } else {
      cuda::layer_norm_forward<Act>(out, mean.data(), rstd.data(), in, nw, nb, N, C, cfg.norm_eps,
                                    s);
    }
  }
  // Every projection: where a LoRA adapter will add its low-rank update on the GPU.
  void project(Act* y, const Act* in, const float* w, const float* bias, int N, int IN, int OUT,
               bool gelu = false, Act* pre = nullptr) {
    cuda::linear_forward<Act>(y, in, wt(w), bias, N, IN, OUT, spec.layout, s, gelu, pre);
  }
  // The block's MLP, ln -> tmp: where an MoE layer will replace the dense MLP on the GPU.
  void mlp(const LayerParams& L, int N) {
    if (spec.mlp == MlpKind::swiglu) {
      project(up.data(), ln.data(), L.up_w, L.up_b, N, C, spec.up_width);
      cuda::swiglu_forward<Act>(act.data(), up.data(), N, F, s);
    } else {  // GELU fused into the GEMM's epilogue
      project(act.data(), ln.data(), L.up_w, L.up_b, N, C, F, true, up.data());
    }
    project(tmp.data(), act.data(), L.down_w, L.down_b, N, F, C);
  }

  ModelConfig cfg;
  BlockSpec spec;
  cudaStream_t s;
  int C, F, D, H, K, HD, QKV, MB;  // MB: block-table entries per row (max_ctx / 16, rounded up)
  int64_t block_elems;             // one block of the pool: (L, 2, 16, K*D)
  int rows = 0;                    // rows the buffers hold
  DeviceWeights weights;
  const ModelParams& wp;  // named device pointers into the weights
  DeviceRope rope;
  DeviceBuffer<float> logits32;
  DeviceBuffer<Act> pool, x, ln, qkv, att, tmp, up, act, logits;
  DeviceBuffer<float> rstd, mean;  // norm statistics (inference keeps none; the kernels write them)
  DeviceBuffer<int> ints;          // per call: tokens | pos | slots | block tables, one upload
  DeviceBuffer<int> next_dev;
  std::vector<int> staging;
};

template <typename Act>
void CudaPassT<Act>::run(const ForwardBatch& b, KvCache& cache) {
  const int N = int(b.ids.size());
  KILN_CHECK(N >= 1, "cuda forward", "no rows to run");
  reserve(N, cache.num_blocks());
  // One upload: tokens, positions, cache slots, and each row's block table (padded to MB).
  staging.assign(size_t(N) * (3 + MB), 0);
  int* t = staging.data();
  int* p = t + N;
  int* slot = p + N;
  int* tables = slot + N;
  for (int n = 0; n < N; ++n) {
    KILN_CHECK(b.pos[n] >= 0 && b.pos[n] < MB * kBlockTokens, "cuda forward", "row ", n,
               ": position ", b.pos[n], " is outside the context of ", MB * kBlockTokens);
    const std::vector<int>& tab = cache.block_table(b.seq[n]);
    t[n] = b.ids[n], p[n] = b.pos[n];
    slot[n] = tab[b.pos[n] / kBlockTokens] * kBlockTokens + b.pos[n] % kBlockTokens;
    std::copy(tab.begin(), tab.begin() + std::min<size_t>(tab.size(), MB), tables + size_t(n) * MB);
  }
  cuda::to_device(ints.data(), staging.data(), staging.size() * 4, s, "decoder inputs");
  const int* d_tok = ints.data();
  const int* d_pos = d_tok + N;
  const int* d_slot = d_pos + N;
  const int* d_tab = d_slot + N;

  cuda::DevicePagedCache<Act> kv{pool.data(), cfg.layers, K * D};
  cuda::embedding_forward<Act>(x.data(), d_tok, wp.wte, N, C, false, s);
  if (spec.positions == PositionKind::learned)
    cuda::embedding_forward<Act>(x.data(), d_pos, wp.wpe, N, C, true, s);
  for (int l = 0; l < cfg.layers; ++l) {
    const LayerParams& L = wp.layers[l];
    norm(ln.data(), x.data(), L.ln1_w, L.ln1_b, N);
    project(qkv.data(), ln.data(), L.qkv_w, L.qkv_b, N, C, QKV);
    if (spec.positions == PositionKind::rope)
      cuda::rope_forward<Act>(qkv.data(), N, H + K, D, QKV, d_pos, rope.cos.data(), rope.sin.data(),
                              s);
    cuda::kv_cache_write<Act>(kv, l, qkv.data(), QKV, H, K, D, d_slot, N, s);
    cuda::paged_attention<Act>(att.data(), qkv.data(), QKV, kv, l, d_tab, MB, d_pos, N, H, K, D, s);
    project(tmp.data(), att.data(), L.o_w, L.o_b, N, HD, C);
    cuda::add<Act>(x.data(), x.data(), tmp.data(), int64_t(N) * C, s);
    norm(ln.data(), x.data(), L.ln2_w, L.ln2_b, N);
    mlp(L, N);
    cuda::add<Act>(x.data(), x.data(), tmp.data(), int64_t(N) * C, s);
  }
  norm(ln.data(), x.data(), wp.lnf_w, wp.lnf_b, N);
  // logits (N, V) = lnf @ lm_head^T: lm_head is (V, C) like nn.Linear in both architectures.
  cuda::linear_forward<Act>(logits.data(), ln.data(), wt(wp.lm_head), nullptr, N, C, cfg.vocab_size,
                            ops::WeightLayout::out_in, s);
}

std::unique_ptr<CudaPass> make_pass(const Model& model, int max_ctx, bool bf16) {
  cuda::require("decoder");
  KILN_CHECK(!model.config().moe.enabled(), "cuda forward",
             "device: cuda does not run Mixture-of-Experts models yet; serve it on the CPU");
  KILN_CHECK(max_ctx >= 1 && max_ctx <= model.config().max_positions, "cuda forward",
             "need 1 <= max_ctx <= the model's context (", model.config().max_positions, "), got ",
             max_ctx);
  if (bf16) return std::make_unique<CudaPassT<cuda::bf16>>(model, max_ctx);
  return std::make_unique<CudaPassT<float>>(model, max_ctx);
}

}  // namespace

std::unique_ptr<ForwardPass> make_cuda_forward_pass(const Model& model, int max_ctx, bool bf16) {
  return make_pass(model, max_ctx, bf16);
}

// Sequence i of the decoder is sequence ids[i] of its own KvCache (block tables only).
struct CudaDecoder::Impl {
  std::unique_ptr<CudaPass> pass;
  std::unique_ptr<KvCache> cache;
  std::vector<KvCache::SeqId> ids;
  int max_seqs = 0, max_len = 0, max_rows = 0;
};

CudaDecoder::CudaDecoder(const Model& model, int max_seqs, int max_len, int max_rows, bool bf16) {
  cuda::require("decoder");
  KILN_CHECK(max_seqs >= 1 && max_len >= 1 && max_len <= model.config().max_positions,
             "cuda decoder", "need max_seqs >= 1 and 1 <= max_len <= the model's context (",
             model.config().max_positions, "), got ", max_seqs, " and ", max_len);
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.max_seqs = max_seqs, m.max_len = max_len, m.max_rows = std::max(max_rows, max_seqs);
  m.pass = make_pass(model, max_len, bf16);
  const ModelConfig& c = model.config();
  const int blocks = max_seqs * ((max_len + kBlockTokens - 1) / kBlockTokens) + 1;
  m.cache = std::make_unique<KvCache>(
      KvCacheShape{c.layers, c.kv_heads * c.head_dim, blocks, /*host_pool=*/false});
  for (int i = 0; i < max_seqs; ++i) m.ids.push_back(m.cache->create());
}

CudaDecoder::~CudaDecoder() = default;

void CudaDecoder::forward(const int* seq, const int* tokens, const int* pos, int N, int* next,
                          float* logits) {
  Impl& m = *impl_;
  KILN_CHECK(N >= 1 && N <= m.max_rows, "cuda decoder", N, " rows in one call; at most ",
             m.max_rows);
  // Each sequence's rows continue it at its length (or restart it at 0), in row order.
  std::vector<int> count(m.max_seqs, 0);
  std::vector<KvCache::SeqId> row_seq(N);
  std::vector<int32_t> ids(tokens, tokens + N);
  std::vector<int> positions(pos, pos + N);
  for (int n = 0; n < N; ++n) {
    KILN_CHECK(seq[n] >= 0 && seq[n] < m.max_seqs && pos[n] >= 0 && pos[n] < m.max_len,
               "cuda decoder", "row ", n, ": sequence ", seq[n], " position ", pos[n],
               " is outside the ", m.max_seqs, " x ", m.max_len, " cache");
    KvCache::SeqId& id = m.ids[seq[n]];
    if (count[seq[n]] == 0 && pos[n] == 0 && m.cache->length(id) > 0) {
      m.cache->release(id);
      id = m.cache->create();
    }
    KILN_CHECK(pos[n] == m.cache->length(id) + count[seq[n]], "cuda decoder", "row ", n,
               ": position ", pos[n], " does not continue sequence ", seq[n], " (length ",
               m.cache->length(id) + count[seq[n]], ") or restart it at 0");
    ++count[seq[n]];
    row_seq[n] = id;
  }
  for (int i = 0; i < m.max_seqs; ++i)
    if (count[i] > 0) m.cache->prepare_append(m.ids[i], count[i]);
  std::vector<int> all(N);
  for (int n = 0; n < N; ++n) all[n] = n;
  m.pass->run({ids, positions, row_seq, all}, *m.cache);
  for (int n = 0; n < N; ++n) m.cache->commit(row_seq[n], &ids[n], 1);
  m.pass->greedy(N, next);
  if (logits) m.pass->copy_rows(all, logits);
}

int CudaDecoder::max_seqs() const {
  return impl_->max_seqs;
}
int CudaDecoder::max_len() const {
  return impl_->max_len;
}
size_t CudaDecoder::device_bytes() const {
  return impl_->pass->bytes();
}

}  // namespace kiln

#else  // no CUDA backend

namespace kiln {

namespace {
[[noreturn]] void no_cuda() {
  fail("decoder",
       "--device cuda, but this kiln was built without the CUDA backend; install the CUDA "
       "toolkit and rebuild (bash scripts/build.sh -DKILN_CUDA=ON), or use the CPU");
}
}  // namespace

std::unique_ptr<ForwardPass> make_cuda_forward_pass(const Model&, int, bool) {
  no_cuda();
}

struct CudaDecoder::Impl {};
CudaDecoder::CudaDecoder(const Model&, int, int, int, bool) {
  no_cuda();
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

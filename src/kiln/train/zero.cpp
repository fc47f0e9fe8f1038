#include "kiln/train/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/ops/adamw.h"
#include "kiln/ops/elementwise.h"
#include "kiln/train/loss_scaler.h"

namespace kiln {

// Gradient buffers of at most this many groups wait on their reduce-scatter at once (stages 2-3):
// enough to overlap one group's communication with the next one's backward, and it bounds the
// transient gradient memory.
static constexpr size_t kMaxInFlight = 2;

int64_t ZeroLayout::block_len(const Chunk& c, int rank) const {
  return std::clamp<int64_t>(c.len - rank * c.n, 0, c.n);
}

ZeroLayout make_zero_layout(std::vector<int64_t> u, int dp, int64_t bucket, bool merge_units) {
  KILN_CHECK(dp >= 1 && bucket >= 1, "zero", "need dp >= 1 and a positive bucket, got dp=", dp,
             " bucket=", bucket);
  KILN_CHECK(u.size() >= 2 && u.front() == 0, "zero", "unit bounds must start at 0");
  for (size_t i = 0; i + 1 < u.size(); ++i)
    KILN_CHECK(u[i] < u[i + 1], "zero", "unit ", i, " is empty or out of order: [", u[i], ", ",
               u[i + 1], ")");
  ZeroLayout L;
  L.dp = dp;
  L.units = std::move(u);
  const int U = int(L.units.size()) - 1;
  // Groups from the last unit down, the order backward finishes them in.
  std::vector<std::pair<int, int>> spans;
  for (int hi = U; hi > 0;) {
    int lo = hi - 1;
    while (merge_units && lo > 0 && L.units[hi] - L.units[lo] < bucket) --lo;
    spans.emplace_back(lo, hi);
    hi = lo;
  }
  std::reverse(spans.begin(), spans.end());
  // Whole chunks are a multiple of dp, so only a group's last chunk is padded and a group's
  // padded buffer holds its elements contiguously, the padding at the end.
  const int64_t whole = std::max<int64_t>(dp, bucket / dp * dp);
  L.group_of.resize(U);
  for (auto [ulo, uhi] : spans) {
    ZeroLayout::Group G{
        ulo,          uhi, L.units[ulo], L.units[uhi] - L.units[ulo], int(L.chunks.size()), 0, 0,
        L.shard_size, 0};
    for (int64_t off = G.lo; off < G.lo + G.len; off += whole) {
      const int64_t len = std::min(whole, G.lo + G.len - off), n = (len + dp - 1) / dp;
      L.chunks.push_back({off, len, n, L.shard_size});
      L.shard_size += n;
      G.padded += dp * n;
    }
    G.chunk_hi = int(L.chunks.size());
    G.shard_n = L.shard_size - G.shard;
    for (int i = ulo; i < uhi; ++i) L.group_of[i] = int(L.groups.size());
    L.groups.push_back(G);
  }
  return L;
}

std::vector<ShardPiece> shard_pieces(const ZeroLayout& layout, const std::vector<ParamInfo>& params,
                                     int rank) {
  std::vector<ShardPiece> out;
  size_t j = 0;  // blocks ascend through the buffer, so the parameter index only moves forward
  for (const auto& c : layout.chunks) {
    int64_t a = layout.block_lo(c, rank), s = c.shard;
    const int64_t end = a + layout.block_len(c, rank);
    while (a < end) {
      while (params.at(j).offset + params[j].numel() <= a) ++j;
      const int64_t e = std::min(end, params[j].offset + params[j].numel());
      out.push_back({a, s, e - a, params[j].decay});
      s += e - a;
      a = e;
    }
  }
  return out;
}

ZeroAdamW::ZeroAdamW(Model& model, dist::Comm& comm, int stage, double bucket_mb, AdamWConfig cfg,
                     AdamW* resumed)
    : model_(model),
      comm_(comm),
      stage_(stage),
      dp_(comm.size()),
      rank_(comm.rank()),
      cfg_(cfg),
      P_(model.num_params()),
      tied_(model.config().tie_embeddings) {
  KILN_CHECK(stage >= 0 && stage <= 3, "zero", "parallel.zero = ", stage, ": use 0, 1, 2 or 3");
  KILN_CHECK(bucket_mb > 0, "zero", "parallel.bucket_mb = ", bucket_mb, ": use a positive size");
  // Units from the layout: the embedding, then each layer from its first norm, then the head
  // from the final norm (Model's buffer order).
  float* base = model.weights().f32();
  ModelParams ref = model.bind(base);
  std::vector<int64_t> bounds{0};
  for (const LayerParams& L : ref.layers) bounds.push_back(L.ln1_w - base);
  bounds.push_back(ref.lnf_w - base);
  bounds.push_back(P_);
  for_each_pointer(ref, [&](float*& p) { offsets_.push_back(p ? p - base : -1); });
  const int64_t bucket =
      std::max<int64_t>(1, int64_t(bucket_mb * double(1 << 20) / double(sizeof(float))));
  layout_ = make_zero_layout(bounds, dp_, bucket, stage_ < 3);
  groups_.resize(layout_.groups.size());

  const int64_t S = stage_ == 0 ? P_ : layout_.shard_size;
  if (stage_ == 0) {
    for (const ParamInfo& p : model.params())
      pieces_.push_back({p.offset, p.offset, p.numel(), p.decay});
  } else {
    pieces_ = shard_pieces(layout_, model.params(), rank_);
  }
  // This rank's blocks of a whole (P) buffer, into a fresh zero-padded shard.
  auto shard_of = [&](const float* full) {
    Tensor s = Tensor::zeros({S});
    for (const auto& c : layout_.chunks)
      std::memcpy(s.f32() + c.shard, full + layout_.block_lo(c, rank_),
                  layout_.block_len(c, rank_) * sizeof(float));
    return s;
  };
  if (resumed) {
    KILN_CHECK(resumed->m().numel() == P_, "zero", "the resumed optimizer has ",
               resumed->m().numel(), " moments for ", P_, " parameters");
    m_ = stage_ == 0 ? resumed->m() : shard_of(resumed->m().f32());
    v_ = stage_ == 0 ? resumed->v() : shard_of(resumed->v().f32());
    steps_ = resumed->steps();
  } else {
    m_ = Tensor::zeros({S});
    v_ = Tensor::zeros({S});
  }
  // Stages 0-1 accumulate whole gradients; stage 1 reduce-scatters them in place, reading up to
  // dp - 1 elements past a chunk's end (its padding; the tail keeps the last chunk in bounds).
  if (stage_ < 2) grads_ = Tensor::zeros({stage_ == 1 ? P_ + dp_ : P_});
  if (stage_ > 0) g_shard_ = Tensor::zeros({S});
  if (stage_ == 3) {
    w_shard_ = shard_of(base);
    release_weights();
  }
}

StatePieces ZeroAdamW::state_pieces() const {
  StatePieces out;
  if (stage_ == 3) {
    for (const ShardPiece& p : pieces_)
      out.weights.push_back({p.flat, w_shard_.f32() + p.shard, p.len});
  } else if (rank_ == 0) {
    out.weights.push_back({0, model_.weights().f32(), P_});
  }
  if (stage_ > 0 || rank_ == 0) {
    for (const ShardPiece& p : pieces_) {
      out.m.push_back({p.flat, m_.f32() + p.shard, p.len});
      out.v.push_back({p.flat, v_.f32() + p.shard, p.len});
    }
  }
  return out;
}

int64_t ZeroAdamW::state_bytes() const {
  int64_t b = stage_ < 3 ? P_ * int64_t(sizeof(float)) : 0;  // the model's whole weights
  for (const Tensor* t : {&grads_, &g_shard_, &w_shard_, &m_, &v_})
    if (t->defined()) b += int64_t(t->nbytes());
  return b;
}

void ZeroAdamW::begin_step() {
  KILN_CHECK(inflight_.empty(), "zero", "begin_step() with gradient collectives in flight: call ",
             "finish_backward() first");
  for (Tensor* g : {&grads_, &g_shard_})
    if (g->defined()) std::memset(g->raw(), 0, g->nbytes());
  comm_bytes_ = 0;
  last_micro_ = true;
}

float ZeroAdamW::sum_over_ranks(float x) {
  if (dp_ == 1) return x;
  comm_.all_reduce(&x, 1);
  comm_bytes_ += dist::all_reduce_bytes(dp_, 1);
  return x;
}

int ZeroAdamW::unit_index(int unit) const {
  if (unit == kEmbedding) return 0;
  if (unit == kHead) return int(layout_.units.size()) - 2;
  return unit + 1;
}

void ZeroAdamW::rebase(ModelParams& m, int64_t lo, int64_t hi, float* to) const {
  size_t i = 0;
  for_each_pointer(m, [&](float*& p) {
    const int64_t off = offsets_[i++];
    if (off >= lo && off < hi) p = to + (off - lo);
  });
}

void ZeroAdamW::gather_group(int gi) {
  const auto& G = layout_.groups[gi];
  Tensor w = Tensor::empty({G.padded});
  std::vector<dist::Request> reqs;
  for (int ci = G.chunk_lo; ci < G.chunk_hi; ++ci) {
    const auto& c = layout_.chunks[ci];
    reqs.push_back(comm_.all_gather_async(w_shard_.f32() + c.shard, w.f32() + (c.lo - G.lo), c.n));
    comm_bytes_ += dist::scatter_gather_bytes(dp_, c.n);
  }
  for (auto& r : reqs) r.wait();
  groups_[gi].w = w;
}

void ZeroAdamW::bind_group(int gi, bool weights, bool grads, ModelParams& w, ModelParams& g) {
  const auto& G = layout_.groups[gi];
  GroupState& s = groups_[gi];
  if (weights) {
    if (stage_ == 3 && !s.w.defined()) gather_group(gi);
    rebase(w, G.lo, G.lo + G.len, stage_ == 3 ? s.w.f32() : model_.weights().f32() + G.lo);
  }
  if (!grads) return;
  if (stage_ < 2) {
    rebase(g, G.lo, G.lo + G.len, grads_.f32() + G.lo);
    return;
  }
  if (!s.g.defined()) {
    while (inflight_.size() >= kMaxInFlight) {
      for (auto& r : inflight_.front().reqs) r.wait();
      complete(inflight_.front());
      inflight_.pop_front();
    }
    s.g = Tensor::zeros({G.padded});
  }
  rebase(g, G.lo, G.lo + G.len, s.g.f32());
}

void ZeroAdamW::bind(int unit, bool backward, ModelParams& w, ModelParams& g) {
  poll();
  // The embedding's backward reads no weights; a tied LM head is the embedding's matrix.
  bind_group(layout_.group_of[unit_index(unit)], !(unit == kEmbedding && backward), backward, w, g);
  if (unit == kHead && tied_) bind_group(layout_.group_of[0], true, backward, w, g);
}

void ZeroAdamW::done(int unit, bool backward) {
  const int gi = layout_.group_of[unit_index(unit)];
  const auto& G = layout_.groups[gi];
  GroupState& s = groups_[gi];
  if (stage_ == 3 && unit == kHead && tied_) groups_[layout_.group_of[0]].w = Tensor();
  if (backward) {
    if (++s.bwd_done == G.unit_hi - G.unit_lo) {
      s.bwd_done = 0;
      if (stage_ == 3) s.w = Tensor();
      reduce_group(gi);
    }
  } else if (stage_ == 3 && ++s.fwd_done == G.unit_hi - G.unit_lo) {
    s.fwd_done = 0;
    s.w = Tensor();
  }
  poll();
}

void ZeroAdamW::reduce_group(int gi) {
  const auto& G = layout_.groups[gi];
  InFlight f{gi, {}, {}, {}};
  if (stage_ == 0) {
    if (!last_micro_) return;  // accumulate locally; the last micro-batch reduces the sum
    for (int ci = G.chunk_lo; ci < G.chunk_hi; ++ci) {
      const auto& c = layout_.chunks[ci];
      f.reqs.push_back(comm_.all_reduce_async(grads_.f32() + c.lo, c.len));
      comm_bytes_ += dist::all_reduce_bytes(dp_, c.len);
    }
  } else if (stage_ == 1) {
    // The sum is needed on its owner only: reduce-scatter (half an all-reduce's bytes), the
    // weights' all-gather after the update being the other half.
    if (!last_micro_) return;
    f.recv = Tensor::empty({G.shard_n});
    for (int ci = G.chunk_lo; ci < G.chunk_hi; ++ci) {
      const auto& c = layout_.chunks[ci];
      f.reqs.push_back(
          comm_.reduce_scatter_async(grads_.f32() + c.lo, f.recv.f32() + (c.shard - G.shard), c.n));
      comm_bytes_ += dist::scatter_gather_bytes(dp_, c.n);
    }
  } else {
    f.send = groups_[gi].g;
    groups_[gi].g = Tensor();
    f.recv = Tensor::empty({G.shard_n});
    for (int ci = G.chunk_lo; ci < G.chunk_hi; ++ci) {
      const auto& c = layout_.chunks[ci];
      f.reqs.push_back(comm_.reduce_scatter_async(f.send.f32() + (c.lo - G.lo),
                                                  f.recv.f32() + (c.shard - G.shard), c.n));
      comm_bytes_ += dist::scatter_gather_bytes(dp_, c.n);
    }
  }
  inflight_.push_back(std::move(f));
}

// Reduced blocks are added in launch order, so the sums over micro-batches are deterministic.
void ZeroAdamW::complete(InFlight& f) {
  if (stage_ == 0) return;
  const auto& G = layout_.groups[f.group];
  float* dst = g_shard_.f32() + G.shard;
  ops::cpu::add(dst, dst, f.recv.f32(), G.shard_n);
}

void ZeroAdamW::poll() {
  while (!inflight_.empty()) {
    for (auto& r : inflight_.front().reqs)
      if (!r.test()) return;
    complete(inflight_.front());
    inflight_.pop_front();
  }
}

void ZeroAdamW::finish_backward() {
  for (; !inflight_.empty(); inflight_.pop_front()) {
    for (auto& r : inflight_.front().reqs) r.wait();
    complete(inflight_.front());
  }
}

template <class F>
void ZeroAdamW::for_each_grad_span(F&& f) {
  if (stage_ == 0) {
    f(grads_.f32(), P_);
  } else {
    f(g_shard_.f32(), g_shard_.numel());  // the padding is zero
  }
}

bool ZeroAdamW::fp16_overflow() {
  // Stage 0 holds the same reduced gradients on every rank; 1-3 ask every rank's shard.
  if (stage_ == 0) return kiln::fp16_overflow(grads_.f32(), P_);
  float bad = kiln::fp16_overflow(g_shard_.f32(), g_shard_.numel()) ? 1.0f : 0.0f;
  if (dp_ > 1) {
    comm_.all_reduce(&bad, 1, dist::ReduceOp::max);
    comm_bytes_ += dist::all_reduce_bytes(dp_, 1);
  }
  return bad != 0;
}

void ZeroAdamW::scale_grads(float s) {
  for_each_grad_span([&](float* x, int64_t n) { ops::cpu::scale(x, s, n); });
}

void ZeroAdamW::norm_over_tensor_parallel(dist::Comm* tp,
                                          const std::function<bool(int64_t)>& counted) {
  norm_tp_ = tp;
  piece_counted_.clear();
  for (const ShardPiece& p : pieces_) piece_counted_.push_back(counted(p.flat));
}

bool ZeroAdamW::clip_and_step(float lr, float clip, double* norm) {
  *norm = grad_norm();
  return clip_and_update(
      *norm, clip, [&](float s) { scale_grads(s); }, [&] { adamw_step(lr); });
}

double ZeroAdamW::grad_norm() {
  double ss = 0;
  if (norm_tp_) {
    for (size_t i = 0; i < pieces_.size(); ++i) {
      if (!piece_counted_[i]) continue;
      const ShardPiece& p = pieces_[i];
      ss += ops::cpu::sum_squares(stage_ >= 1 ? g_shard_.f32() + p.shard : grads_.f32() + p.flat,
                                  p.len);
    }
  } else {
    for_each_grad_span([&](float* x, int64_t n) { ss += ops::cpu::sum_squares(x, n); });
  }
  // Sharded stages: the global norm from every rank's sum of squares (fp32 on the wire: the
  // clip factor moves by ~1e-7 relative, well inside the data-parallel tolerance).
  if (stage_ > 0 && dp_ > 1) ss = sum_over_ranks(float(ss));
  if (norm_tp_) {
    ss = dist::all_reduce_sum(*norm_tp_, ss);
    comm_bytes_ += dist::all_reduce_bytes(norm_tp_->size(), 2);
  }
  return std::sqrt(ss);
}

void ZeroAdamW::adamw_step(float lr) {
  ++steps_;
  float* w = stage_ == 3 ? w_shard_.f32() : model_.weights().f32();
  const float* g = stage_ >= 1 ? g_shard_.f32() : grads_.f32();
  for (const ShardPiece& p : pieces_) {
    const ops::AdamWParams hp = adamw_params(cfg_, lr, p.decay, steps_);
    ops::cpu::adamw_step(w + (stage_ == 3 ? p.shard : p.flat), g + (stage_ >= 1 ? p.shard : p.flat),
                         m_.f32() + p.shard, v_.f32() + p.shard, p.len, hp);
  }
  if (stage_ == 1 || stage_ == 2) {
    // Every rank updated its blocks in place: gather them into every rank's whole weights.
    gather_flat(model_.weights().f32(), true, model_.weights().f32());
  }
}

void ZeroAdamW::gather_flat(const float* src, bool src_whole, float* full) {
  int64_t most = 0;
  for (const auto& c : layout_.chunks) most = std::max(most, c.n);
  // Staging: a block may be padded, and in a whole buffer a block lies inside its chunk's output.
  std::vector<float> in(most), out(size_t(most) * dp_);
  for (const auto& c : layout_.chunks) {
    const int64_t k = layout_.block_len(c, rank_);
    std::memcpy(in.data(), src + (src_whole ? layout_.block_lo(c, rank_) : c.shard),
                k * sizeof(float));
    std::fill(in.begin() + k, in.begin() + c.n, 0.0f);
    comm_.all_gather(in.data(), out.data(), c.n);
    comm_bytes_ += dist::scatter_gather_bytes(dp_, c.n);
    if (full) std::memcpy(full + c.lo, out.data(), c.len * sizeof(float));
  }
}

std::unique_ptr<AdamW> ZeroAdamW::gather_optimizer() {
  const bool root = rank_ == 0;
  if (stage_ == 0) return root ? std::make_unique<AdamW>(cfg_, m_, v_, steps_) : nullptr;
  Tensor m = root ? Tensor::empty({P_}) : Tensor(), v = root ? Tensor::empty({P_}) : Tensor();
  gather_flat(m_.f32(), false, root ? m.f32() : nullptr);
  gather_flat(v_.f32(), false, root ? v.f32() : nullptr);
  return root ? std::make_unique<AdamW>(cfg_, m, v, steps_) : nullptr;
}

void ZeroAdamW::gather_weights() {
  if (stage_ < 3) return;
  model_.weights() = Tensor::empty({P_});
  gather_flat(w_shard_.f32(), false, model_.weights().f32());
}

void ZeroAdamW::release_weights() {
  if (stage_ == 3) model_.weights() = Tensor();
}

}  // namespace kiln

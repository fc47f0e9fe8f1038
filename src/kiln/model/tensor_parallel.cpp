#include "kiln/model/tensor_parallel.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kiln/core/error.h"

namespace kiln {

namespace {

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// How a parameter is split: along dim 0 (rows) or dim 1 (columns, per row), where the dim is
// `parts` equal blocks (q|k|v of GPT-2's c_attn: 3) and each block keeps [begin, begin + size).
struct Split {
  enum { whole, rows, cols } axis = whole;
  int parts = 1;
  int64_t begin = 0, size = 0;
};

}  // namespace

std::pair<int, int> vocab_range(int V, int tp, int rank) {
  const int base = V / tp, extra = V % tp;
  const int begin = rank * base + std::min(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

ModelConfig shard_config(const ModelConfig& full, int tp, int rank) {
  KILN_CHECK(tp >= 1 && rank >= 0 && rank < tp, "tensor_parallel", "rank ", rank,
             " is out of range for parallel.tp = ", tp);
  const char* heads = full.arch == Arch::llama ? "num_attention_heads" : "n_head";
  KILN_CHECK(full.heads % tp == 0, "tensor_parallel", heads, " = ", full.heads,
             " is not divisible by parallel.tp = ", tp,
             ": every rank holds whole heads; use a tp that divides ", full.heads);
  KILN_CHECK(full.kv_heads % tp == 0, "tensor_parallel", "num_key_value_heads = ", full.kv_heads,
             " is not divisible by parallel.tp = ", tp,
             ": every rank holds whole kv heads (kiln does not replicate them); use a tp that "
             "divides ",
             full.kv_heads);
  KILN_CHECK(full.intermediate % tp == 0, "tensor_parallel", "the intermediate size ",
             full.intermediate, " is not divisible by parallel.tp = ", tp,
             "; use a tp that divides it");
  KILN_CHECK(full.vocab_size >= tp, "tensor_parallel", "vocab_size ", full.vocab_size,
             " is smaller than parallel.tp = ", tp);
  ModelConfig c = full;
  c.heads /= tp;
  c.kv_heads /= tp;
  c.intermediate /= tp;
  auto [v0, v1] = vocab_range(full.vocab_size, tp, rank);
  c.vocab_size = v1 - v0;
  return c;
}

TensorParallelMap::TensorParallelMap(const ModelConfig& full, int tp, int rank)
    : full_cfg_(full),
      local_(shard_config(full, tp, rank)),
      tp_(tp),
      rank_(rank),
      vocab_(vocab_range(full.vocab_size, tp, rank)) {
  const std::vector<ParamInfo> fp = param_layout(full), lp = param_layout(local_);
  KILN_CHECK(fp.size() == lp.size(), "tensor_parallel", "internal: shard layout differs");
  full_params_ = fp.back().offset + fp.back().numel();
  local_params_ = lp.back().offset + lp.back().numel();
  const bool llama = full.arch == Arch::llama;
  const int64_t D = full.head_dim;
  const int64_t HDl = int64_t(local_.heads) * D, KDl = int64_t(local_.kv_heads) * D;
  const int64_t Fl = local_.intermediate;
  for (size_t i = 0; i < fp.size(); ++i) {
    const ParamInfo &f = fp[i], &l = lp[i];
    KILN_CHECK(f.name == l.name, "tensor_parallel", "internal: shard layout differs at ", f.name);
    const std::string& n = f.name;
    Split s;
    auto set = [&](decltype(Split::axis) axis, int parts, int64_t size) {
      s = {axis, parts, rank * size, size};
    };
    if (is_token_embedding(n) || n == "lm_head.weight") {
      s = {Split::rows, 1, vocab_.first, vocab_.second - vocab_.first};
    } else if (llama) {
      if (ends_with(n, "q_proj.weight")) set(Split::rows, 1, HDl);
      if (ends_with(n, "k_proj.weight") || ends_with(n, "v_proj.weight")) set(Split::rows, 1, KDl);
      if (ends_with(n, "o_proj.weight")) set(Split::cols, 1, HDl);
      if (ends_with(n, "gate_proj.weight") || ends_with(n, "up_proj.weight"))
        set(Split::rows, 1, Fl);
      if (ends_with(n, "down_proj.weight")) set(Split::cols, 1, Fl);
    } else {
      // Conv1D weights are (in, out): column-parallel splits columns, row-parallel rows.
      if (ends_with(n, "attn.c_attn.weight")) set(Split::cols, 3, HDl);
      if (ends_with(n, "attn.c_attn.bias")) set(Split::rows, 3, HDl);
      if (ends_with(n, "attn.c_proj.weight")) set(Split::rows, 1, HDl);
      if (ends_with(n, "mlp.c_fc.weight")) set(Split::cols, 1, Fl);
      if (ends_with(n, "mlp.c_fc.bias")) set(Split::rows, 1, Fl);
      if (ends_with(n, "mlp.c_proj.weight")) set(Split::rows, 1, Fl);
    }
    const int64_t R = f.shape[0], Cf = f.shape.size() == 2 ? f.shape[1] : 1;
    if (s.axis == Split::whole || tp == 1) {
      segments_.push_back({f.offset, l.offset, f.numel()});
      if (s.axis == Split::whole) replicated_names_.insert(n);
    } else if (s.axis == Split::rows) {
      const int64_t block = R / s.parts;
      for (int j = 0; j < s.parts; ++j)
        segments_.push_back(
            {f.offset + (j * block + s.begin) * Cf, l.offset + j * s.size * Cf, s.size * Cf});
    } else {
      const int64_t block = Cf / s.parts, Cl = s.parts * s.size;
      for (int64_t r = 0; r < R; ++r)
        for (int j = 0; j < s.parts; ++j)
          segments_.push_back(
              {f.offset + r * Cf + j * block + s.begin, l.offset + r * Cl + j * s.size, s.size});
    }
  }
}

void TensorParallelMap::scatter(const float* full, float* local) const {
  for (const Segment& s : segments_)
    std::memcpy(local + s.local, full + s.full, sizeof(float) * s.n);
}

void TensorParallelMap::gather(const float* local, float* full) const {
  for (const Segment& s : segments_)
    std::memcpy(full + s.full, local + s.local, sizeof(float) * s.n);
}

void TensorParallelMap::gather_to_root(dist::Comm& tp, const float* local, float* full) const {
  KILN_CHECK(tp.size() == tp_ && tp.rank() == rank_, "tensor_parallel", "communicator of size ",
             tp.size(), " rank ", tp.rank(), " does not match the map's tp ", tp_, " rank ", rank_);
  constexpr int kTag = 7101;
  if (rank_ != 0) {
    tp.send(local, local_params_, 0, kTag);
    return;
  }
  gather(local, full);
  std::vector<float> buf;
  for (int r = 1; r < tp_; ++r) {
    TensorParallelMap other(full_cfg_, tp_, r);
    buf.resize(other.local_params());
    tp.recv(buf.data(), other.local_params(), r, kTag);
    other.gather(buf.data(), full);
  }
}

TrainOptions TensorParallelMap::train_options(TrainOptions base, dist::Comm* tp,
                                              bool sequence_parallel) const {
  base.tp = tp;
  base.sequence_parallel = sequence_parallel;
  base.vocab_begin = vocab_.first;
  base.vocab_total = full_cfg_.vocab_size;
  return base;
}

}  // namespace kiln

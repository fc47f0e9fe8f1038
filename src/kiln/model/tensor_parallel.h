// Megatron-style tensor parallelism (Shoeybi et al., 2019): each of tp ranks holds a shard of the
// model that is itself a Model, whose config is the shard's (H/tp heads, K/tp kv heads, F/tp
// intermediate, a slice of the vocabulary) and whose parameters carry the full model's names.
//   column-parallel (output rows split): q|k|v by head group, gate|up (GPT-2: c_attn and c_fc
//     columns, and their biases);
//   row-parallel (input columns split): o_proj, down_proj (GPT-2: the two c_proj weights);
//   vocabulary-parallel: the embedding and LM head rows, [begin, end) per rank;
//   replicated: norms, the row-parallel layers' biases, GPT-2 positions.
// This file owns the mapping between the two layouts; TrainState (transformer.h) runs a shard with
// the communication (TrainOptions::tp).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kiln/dist/comm.h"
#include "kiln/model/transformer.h"

namespace kiln {

// Rows [begin, end) of a V-row vocabulary held by `rank` of tp: contiguous, the first V % tp
// ranks one row more.
std::pair<int, int> vocab_range(int V, int tp, int rank);

// The config of rank's shard. Throws naming the fix when the model does not split over tp ranks
// (heads, kv heads or intermediate size not divisible by tp, fewer vocabulary rows than ranks).
ModelConfig shard_config(const ModelConfig& full, int tp, int rank);

class TensorParallelMap {
 public:
  // The mapping for rank `rank` of tp (checked as shard_config does).
  TensorParallelMap(const ModelConfig& full, int tp, int rank);

  const ModelConfig& config() const { return local_; }  // the shard's
  int tp() const { return tp_; }
  int rank() const { return rank_; }
  int vocab_begin() const { return vocab_.first; }
  int64_t full_params() const { return full_params_; }
  int64_t local_params() const { return local_params_; }

  // Copies this rank's part of a buffer in the full model's layout (weights, gradients, AdamW
  // moments) into one in the shard's layout (scatter), and back (gather; other ranks' parts of
  // `full` are left as they are).
  void scatter(const float* full, float* local) const;
  void gather(const float* local, float* full) const;
  // Gathers every rank's shard of a buffer into `full` on tp rank 0 (send/recv over `tp`;
  // collective over tp, `full` is only written on rank 0 and may be null elsewhere).
  void gather_to_root(dist::Comm& tp, const float* local, float* full) const;

  // Where the shard's pieces sit: f(full offset, local offset, length) for every run, in the
  // two flat layouts.
  template <class F>
  void for_each_run(F&& f) const {
    for (const Segment& s : segments_) f(s.full, s.local, s.n);
  }
  // Whether every tp rank holds the whole parameter (norms, row-parallel biases, positions).
  bool replicated(const std::string& name) const { return replicated_names_.count(name) > 0; }

  // TrainOptions for running this shard: the communicator, sequence parallelism, the vocabulary.
  TrainOptions train_options(TrainOptions base, dist::Comm* tp, bool sequence_parallel) const;

 private:
  struct Segment {
    int64_t full, local, n;  // float offsets into the two flat buffers, and the length
  };
  ModelConfig full_cfg_, local_;
  int tp_, rank_;
  std::pair<int, int> vocab_;
  int64_t full_params_ = 0, local_params_ = 0;
  std::vector<Segment> segments_;
  std::set<std::string> replicated_names_;
};

}  // namespace kiln

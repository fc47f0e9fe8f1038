// Data-parallel gradient synchronization and AdamW, with ZeRO's sharding (Rajbhandari et al.
// 2020; DeepSpeed's stages): 0 keeps everything whole and all-reduces gradients in buckets
// overlapped with backward; 1 shards the AdamW moments (the whole gradient accumulates over
// micro-batches, then is reduce-scattered to its owners); 2 also shards the gradients
// (reduce-scattered every micro-batch);
// 3 also the weights (each unit gathered just before its forward and backward, freed after).
// Every stage gives the single-process update up to the order of the cross-rank sums.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "kiln/core/tensor.h"
#include "kiln/dist/comm.h"
#include "kiln/model/transformer.h"
#include "kiln/train/optimizer.h"
#include "kiln/train/sharded_checkpoint.h"

namespace kiln {

// How the flat parameter buffer (P) is cut for communication and sharding. Units are the step's
// units in buffer order (the embedding, each layer, the head; StepHooks). Groups are runs of
// whole units communicated together: one unit each under ZeRO-3 (a group is what is gathered),
// else units merged up to the bucket size in backward order (Megatron's buckets). Chunks cut a
// group into collectives of at most the bucket size. A chunk of len elements is padded to dp·n;
// rank r owns its elements [r·n, (r+1)·n), those below len being real. A rank's shard is its
// block of every chunk, back to back, so any P and dp work: shard_size = sum of n.
struct ZeroLayout {
  struct Chunk {
    int64_t lo, len;  // flat range [lo, lo + len)
    int64_t n;        // elements per rank: dp·n >= len, dp·n - len < dp
    int64_t shard;    // where each rank's block of this chunk sits in its shard
  };
  struct Group {
    int unit_lo, unit_hi;    // units [unit_lo, unit_hi)
    int64_t lo, len;         // flat range
    int chunk_lo, chunk_hi;  // chunks [chunk_lo, chunk_hi)
    int64_t padded;          // sum of dp·n over its chunks: its gather/gradient buffer's size
    int64_t shard, shard_n;  // its blocks' range in a rank's shard
  };
  int dp = 1;
  std::vector<int64_t> units;  // unit u is flat [units[u], units[u + 1])
  std::vector<Group> groups;   // in buffer order
  std::vector<Chunk> chunks;   // in buffer order
  std::vector<int> group_of;   // unit -> group
  int64_t shard_size = 0;

  // This rank's real elements of chunk c: flat [lo, lo + len) at shard offset c.shard.
  int64_t block_lo(const Chunk& c, int rank) const { return c.lo + rank * c.n; }
  int64_t block_len(const Chunk& c, int rank) const;
};

// unit_bounds: 0 = u_0 < u_1 < ... < u_U = P. bucket: the target elements per collective.
ZeroLayout make_zero_layout(std::vector<int64_t> unit_bounds, int dp, int64_t bucket,
                            bool merge_units);

// A run of one parameter inside a rank's shard: flat [flat, flat + len) at shard offset `shard`,
// with that parameter's weight decay (a shard boundary may cut a parameter anywhere).
struct ShardPiece {
  int64_t flat, shard, len;
  bool decay;
};
std::vector<ShardPiece> shard_pieces(const ZeroLayout& layout, const std::vector<ParamInfo>& params,
                                     int rank);

// The trainer's gradient sync and optimizer for one data-parallel group (any size, 1 included).
// A step: begin_step(); per micro-batch begin_micro(last) and TrainState::step(..., *this, ...);
// finish_backward(); then clip_and_step(). Persistent state per rank (state_bytes):
//   stage 0: weights P, grads P, m and v P each;  1: weights P, grads P + S, m and v S each;
//   2: weights P, grads, m, v S each;              3: weights, grads, m, v S each  (S ~ P/dp).
// Under ZeRO-3 the model's own flat weights are released (Model::weights() is empty) except
// between gather_weights() and release_weights().
class ZeroAdamW final : public StepHooks {
 public:
  // Takes this rank's shard of the model's weights (stage 3) and of `resumed`'s moments and step
  // count (a loaded checkpoint; null for a fresh start).
  ZeroAdamW(Model& model, dist::Comm& comm, int stage, double bucket_mb, AdamWConfig cfg,
            AdamW* resumed = nullptr);

  int stage() const { return stage_; }
  const ZeroLayout& layout() const { return layout_; }
  int64_t steps() const { return steps_; }

  // Under tensor parallelism the model is one tp rank's shard: the clipping norm then sums over
  // `tp` too, each piece counted where `counted(flat offset)` says (a replicated parameter on
  // one tp rank only). Collective over tp from then on.
  void norm_over_tensor_parallel(dist::Comm* tp, const std::function<bool(int64_t)>& counted);

  void begin_step();  // zeroes the gradients and the step's communication count
  // Stages 0 and 1 reduce only after the last micro-batch (Megatron's no_sync): earlier ones
  // accumulate locally. Stages 2 and 3 reduce-scatter every micro-batch into the shard.
  void begin_micro(bool last) { last_micro_ = last; }
  void finish_backward();         // waits for every gradient collective of the step
  float sum_over_ranks(float x);  // a scalar all-reduce, counted in comm_bytes

  // Whether any gradient overflows fp16 on any rank (an fp16 run's skip test).
  bool fp16_overflow();
  void scale_grads(float s);
  // The whole gradient's L2 norm (collective over dp when sharded, and over tp after
  // norm_over_tensor_parallel).
  double grad_norm();
  // One AdamW update of this rank's shard from its gradients, then the weights made whole again
  // where they are kept whole.
  void adamw_step(float lr);
  // grad_norm, then clip_and_update (optimizer.h) with scale_grads and adamw_step. A non-finite
  // norm skips the update and returns false. `norm` receives the pre-clipping norm.
  [[nodiscard]] bool clip_and_step(float lr, float clip, double* norm);

  // Collective. The whole optimizer state on rank 0 (null elsewhere), for save_checkpoint.
  std::unique_ptr<AdamW> gather_optimizer();
  // Collective, ZeRO-3: makes Model::weights() whole on every rank / releases it again.
  void gather_weights();
  void release_weights();

  // What this rank owns for a sharded checkpoint: its shard of the moments (all of them on rank
  // 0 under stage 0) and of the weights (stage 3; else rank 0 writes the whole weights).
  StatePieces state_pieces() const;

  int64_t state_bytes() const;  // this rank's persistent weights, gradients and moments
  int64_t comm_bytes() const { return comm_bytes_; }  // sent by this rank since begin_step()

  void bind(int unit, bool backward, ModelParams& w, ModelParams& g) override;
  void done(int unit, bool backward) override;

 private:
  struct GroupState {
    Tensor w, g;  // gathered weights (stage 3), this micro-batch's gradients (stages 2-3)
    int fwd_done = 0, bwd_done = 0;
  };
  struct InFlight {  // one group's gradient collectives, completed in launch order
    int group;
    std::vector<dist::Request> reqs;
    Tensor send, recv;  // stages 2-3: the group's gradients and this rank's reduced blocks
  };
  int unit_index(int unit) const;
  void bind_group(int gi, bool weights, bool grads, ModelParams& w, ModelParams& g);
  void rebase(ModelParams& m, int64_t lo, int64_t hi, float* to) const;
  void gather_group(int gi);
  void reduce_group(int gi);
  void poll();
  void complete(InFlight& f);
  // Every rank's blocks, read from src (a shard, or a whole buffer when src_whole), into full
  // (P; null: take part without keeping the result).
  void gather_flat(const float* src, bool src_whole, float* full);
  template <class F>
  void for_each_grad_span(F&& f);  // f(float*, n) over the gradients this rank updates

  Model& model_;
  dist::Comm& comm_;
  int stage_, dp_, rank_;
  AdamWConfig cfg_;
  int64_t P_;
  ZeroLayout layout_;
  std::vector<ShardPiece> pieces_;
  std::vector<int64_t> offsets_;  // each pointer of a ModelParams (for_each_pointer order)
  bool tied_;
  Tensor grads_;    // (P) stages 0-1
  Tensor g_shard_;  // (S) stages 2-3
  Tensor w_shard_;  // (S) stage 3
  Tensor m_, v_;    // (P) stage 0, else (S)
  int64_t steps_ = 0;
  dist::Comm* norm_tp_ = nullptr;    // norm_over_tensor_parallel
  std::vector<char> piece_counted_;  // per piece of pieces_
  std::vector<GroupState> groups_;
  std::deque<InFlight> inflight_;
  bool last_micro_ = true;
  int64_t comm_bytes_ = 0;
};

}  // namespace kiln

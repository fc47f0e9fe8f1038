// ZeRO-1 for a model part (a tensor-parallel shard, a pipeline stage, or a stage of a shard), as
// Megatron's distributed optimizer does it: the part's flat buffer is cut into dp equal blocks
// (the last one short), rank r of the data-parallel group keeps AdamW's moments for block r only
// and updates only those weights, then the blocks are all-gathered so every dp rank holds the
// whole part again. The gradient stays whole (all-reduced over dp before the step), so the
// clipping norm is computed as without sharding. Moments per rank: 2P/dp instead of 2P.
#pragma once

#include <cstdint>
#include <memory>

#include "kiln/core/tensor.h"
#include "kiln/dist/comm.h"
#include "kiln/model/transformer.h"
#include "kiln/train/optimizer.h"

namespace kiln {

class DpShardedAdamW {
 public:
  // Takes this rank's block of `whole` (the part's full AdamW state: fresh, or resumed).
  DpShardedAdamW(Model& part, dist::Comm& dp, AdamWConfig cfg, const AdamW& whole);

  // One AdamW update of this rank's block from the (dp-summed, clipped) gradient, then the
  // weights all-gathered over dp. Collective over dp.
  void step(const float* grads, float lr);
  // The part's whole optimizer state, gathered over dp on every rank (for checkpoints).
  std::unique_ptr<AdamW> gather() const;

  int64_t steps() const { return steps_; }
  int64_t state_bytes() const { return m_.nbytes() + v_.nbytes(); }  // the moments held here
  int64_t comm_bytes() const { return comm_bytes_; }                 // the last step's gather
 private:
  Model& part_;
  dist::Comm& dp_;
  AdamWConfig cfg_;
  int64_t P_, n_, lo_, hi_;  // the part's size, the block size, this rank's block [lo_, hi_)
  Tensor m_, v_;             // (n_): this rank's block of the moments
  int64_t steps_ = 0;
  int64_t comm_bytes_ = 0;
};

}  // namespace kiln

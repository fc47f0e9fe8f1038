// The trainer's side of tensor parallelism: every rank builds (or loads) the full model and its
// AdamW state identically and keeps its shard (model/tensor_parallel.h); checkpoints gather the
// shards back into one full model on tp rank 0, so a checkpoint is one ordinary Hugging Face
// directory that `kiln eval/generate` and a resume with any layout read unchanged.
#pragma once

#include "kiln/dist/comm.h"
#include "kiln/model/tensor_parallel.h"
#include "kiln/train/optimizer.h"

namespace kiln {

// Copies this rank's part of the full weights and AdamW moments (and the step count) into the
// shard's.
void scatter_training_state(const TensorParallelMap& map, const Model& full, AdamW& full_opt,
                            Model& shard, AdamW& opt);
// Gathers every tp rank's shard into full and full_opt on tp rank 0 (elsewhere they may be null).
// Collective over tp.
void gather_training_state(const TensorParallelMap& map, dist::Comm& tp, const Model& shard,
                           AdamW& opt, Model* full, AdamW* full_opt);

}  // namespace kiln

// Sharded checkpoints (parallel.checkpoint: sharded): every rank writes the part of the training
// state it owns, and nobody gathers the whole model. A checkpoint directory then holds
// manifest.json (the layout it was written under and its shard files), shard_RRRRR.safetensors
// per contributing rank, and, as a gathered checkpoint does, config.json, tokenizer.json and
// trainer_state.json. A shard holds runs of the WHOLE model's flat buffers (weights, AdamW
// moments), each at its offset in the unsharded layout, so any layout reassembles them:
// load_checkpoint (checkpoint.h) reads a sharded directory like a gathered one and the trainer
// cuts it again for its own layout (save at tp 2 x pp 2, resume at dp 4).
// This file builds on checkpoint.h (trainer_state.json, pruning); checkpoint.cpp never calls it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/dist/comm.h"
#include "kiln/model/tensor_parallel.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/checkpoint.h"

namespace kiln {

// One rank's part of the whole model's flat buffers, as runs at offsets of the whole layout.
struct StatePieces {
  struct Run {
    int64_t full;       // offset in the whole model's flat buffer
    const float* data;  // this rank's copy
    int64_t n;
  };
  std::vector<Run> weights, m, v;  // m and v: AdamW's first and second moments
};

// The pieces a model part holds: `part` is the whole model, a tensor-parallel shard (tpm), a
// pipeline stage of either, or a stage of a shard; opt is its AdamW. Copies are left out: a later
// pipeline stage's tied embedding (the first stage's is the one) and parameters every tp rank
// replicates (tp rank 0's are).
StatePieces model_pieces(const Model& part, const AdamW& opt, const TensorParallelMap* tpm);
// Runs given at offsets of `part`'s own flat layout (ZeroAdamW::state_pieces), moved to the whole
// model's, with the same copies left out.
StatePieces to_whole_layout(const StatePieces& local, const Model& part,
                            const TensorParallelMap* tpm);

// Collective over `world`: writes RUN_DIR/checkpoints/step_NNNNNNNN (atomically, like
// save_checkpoint) from every rank's pieces; `whole` describes the whole model (config.json);
// `layout` is recorded in the manifest. Returns the directory on every rank.
std::string save_sharded_checkpoint(const std::string& run_dir, const StatePieces& mine,
                                    dist::Comm& world, const ModelConfig& whole,
                                    const Tokenizer& tok, int64_t optimizer_steps,
                                    const TrainerState& state, const nlohmann::json& layout,
                                    int keep);

}  // namespace kiln

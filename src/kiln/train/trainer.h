// The training loop: data -> forward/backward -> clip -> AdamW, with evaluation, metrics
// (RUN_DIR/metrics.jsonl), atomic checkpoints and bit-exact resume.
#pragma once

#include <string>
#include <vector>

#include "kiln/dist/comm.h"
#include "kiln/train/train_config.h"

namespace kiln {

struct TrainResult {
  double final_loss = 0, final_val_loss = 0;
  int64_t steps = 0;
  std::string checkpoint;  // the last checkpoint written
  // Every step this call ran, in order: its loss and wall-clock milliseconds (this rank's).
  std::vector<double> losses, step_ms;
  // The largest over the ranks of the persistent weights+gradients+AdamW bytes, and of the bytes
  // sent in the last step (every rank gets these).
  int64_t state_bytes = 0, comm_bytes = 0;
  int64_t activation_bytes = 0;  // this rank's activations and low-precision weight copies
};

// Runs (or, with resume, continues from the newest checkpoint in cfg.run_dir) the training
// described by cfg. Writes RUN_DIR/config.yaml, metrics.jsonl and checkpoints/. With a
// communicator of several ranks (mpirun, srun), trains in cfg.parallel's layout (tensor parallel
// over groups of parallel.tp ranks, pipeline parallel over parallel.pp stages, data parallel with
// ZeRO across them): the same global batch and loss curve as one process, split over the ranks;
// rank 0 writes the run directory and gathered checkpoints.
TrainResult train(TrainConfig cfg, bool resume, dist::Comm* comm = nullptr);

}  // namespace kiln

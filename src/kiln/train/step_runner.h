// One optimizer step in this rank's layout, behind one interface: the trainer's loop (trainer.cpp)
// is data -> StepRunner::step -> schedule -> metrics -> eval -> checkpoint whatever the layout.
// One implementation per layout, made by make_step_runner from the config:
//   ZeRO (zero_runner.cpp)    a whole model, or a tensor-parallel shard with parallel.zero > 0:
//                             TrainState with StepHooks into ZeroAdamW (one process: stage 0, dp 1)
//   tensor parallel (part_runner.cpp)  a shard, parallel.zero = 0: TrainState, AdamW
//   pipeline (part_runner.cpp)         a stage (of a shard): Pipeline, AdamW or DpShardedAdamW
//   GPU (gpu_runner.cpp)      device: cuda, one process: CudaTrainState
//   LoRA (lora_runner.cpp)    method lora: the base frozen, an adapter trained (dp only)
//   expert parallel (expert_runner.cpp)  parallel.ep > 1: a Mixture-of-Experts model's experts
//                             split over ep ranks, TrainState dispatching rows to them, AdamW
// Every runner makes the same decisions in the same order (StepRunner::step): a non-finite loss
// or an fp16 overflow on any rank skips the step on all of them; otherwise the gradients are
// unscaled, the whole model's norm taken, and clip_and_update (optimizer.h) clips and updates.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/data/batch_source.h"
#include "kiln/dist/groups.h"
#include "kiln/model/lora.h"
#include "kiln/model/tensor_parallel.h"
#include "kiln/model/transformer.h"
#include "kiln/train/optimizer.h"
#include "kiln/train/pipeline.h"
#include "kiln/train/sharded_checkpoint.h"
#include "kiln/train/train_config.h"

namespace kiln {

// Whether parameter p of this rank's part counts towards the whole model's gradient norm: a
// parameter every tp rank replicates counts on tp rank 0 only (tpm: null without tensor
// parallelism), a later pipeline stage's copy of a tied embedding not at all (the first's counts).
bool counts_in_whole_norm(const ParamInfo& p, const TensorParallelMap* tpm, bool tied_copy);

// The whole model and its optimizer state on world rank 0, for a gathered checkpoint (null
// elsewhere); `owned` keeps whatever was assembled for it alive.
struct WholeState {
  const Model* model = nullptr;
  const AdamW* opt = nullptr;
  GatheredModel owned;
};

// A LoRA run's trainable state (method lora): the adapter, its optimizer and the frozen base.
struct AdapterState {
  LoraWeights* weights = nullptr;
  AdamW* opt = nullptr;
  const Model* base = nullptr;
};

class StepRunner {
 public:
  struct Outcome {
    double loss = 0;          // the global batch's mean loss (every rank)
    double norm = 0;          // the whole model's gradient norm before clipping ...
    bool norm_taken = false;  // ... when the step got that far
    bool updated = false;
  };
  virtual ~StepRunner() = default;

  // One try at an optimizer step at learning rate lr: train.grad_accum micro-batches drawn from
  // `data` (this rank computes its rows), the loss gradient times `scale` (fp16's loss scale; 1
  // otherwise), then the update unless `skip` (a testing aid), a non-finite loss or an fp16
  // overflow on any rank says otherwise. Collective over the world.
  Outcome step(BatchSource& data, float lr, double scale, bool skip);

  // Forward only of one validation batch's rows of this rank (B/dp rows at row0): the mean loss
  // over the counted targets and their number (0 on pipeline stages without the head).
  virtual double eval(const int* ids, const int* targets, int64_t* counted) = 0;
  // The ranks' shares of a loss summed: over dp, and over pp for a pipeline (0 off its last
  // stage); the tp ranks of a group hold the same value. Collective.
  double sum_shares(double x);

  // Checkpoints. Collective: what this rank writes into a sharded checkpoint, and the optimizer
  // step count; or the whole state on world rank 0. checkpoint_done() after either frees what
  // they assembled.
  virtual StatePieces sharded_pieces() = 0;
  virtual int64_t optimizer_steps() const = 0;
  virtual WholeState gather_whole() = 0;
  virtual void checkpoint_done() {}
  // Method lora: what its checkpoints hold and resume into (empty for the other runners, whose
  // checkpoints are the whole model).
  virtual AdapterState adapter() { return {}; }

  // After the last step: the whole trained model on world rank 0, or null when this rank holds
  // only a part (then samples come from the checkpoint). Collective.
  virtual const Model* trained_model() = 0;

  // Persistent bytes of this rank's weights, gradients and AdamW moments; of its activations;
  // sent by this rank in the last step.
  virtual int64_t state_bytes() const = 0;
  virtual int64_t activation_bytes() const = 0;
  virtual int64_t comm_bytes() const = 0;
  // The layout's part of the start-up log line (", zero 1 (moments sharded over dp)").
  virtual std::string describe() const { return ""; }
  // A Mixture-of-Experts model's routing in this rank's last forward (null: dense, or a layout
  // that does not report it).
  virtual const MoeStats* moe_stats() const { return nullptr; }
  virtual std::string device_suffix() const { return ""; }

  int row0() const { return row0_; }  // this rank's first row of each global batch
  // Packed rows (BatchSource::positions): this rank's rows' positions, (Bl, T), for the steps
  // and evaluations that follow (TrainState::set_positions); null: one sequence per row. The
  // GPU runner refuses non-null; the pipeline takes each micro-batch's from the data itself.
  virtual void set_positions(const int32_t* positions);

 protected:
  StepRunner(const TrainConfig& cfg, dist::ProcessGroups& groups);

  // Draws the step's micro-batches and runs `micro(i, ids, targets, grad_scale)` on this rank's
  // rows of micro-batch i: with w this rank's share of the global batch's counted targets,
  // grad_scale = scale / accum * w. Returns the sum over the micro-batches of w * micro's loss.
  template <class Micro>
  double accumulate(BatchSource& data, double scale, Micro&& micro);

  // The parts of step(), per layout. forward_backward returns the loss summed over the ranks and
  // leaves the gradient summed where the optimizer reads it.
  virtual double forward_backward(BatchSource& data, double scale) = 0;
  virtual bool fp16_overflow() = 0;                 // any gradient beyond fp16 on any rank
  virtual bool any_stage(bool bad) { return bad; }  // a pipeline: whether set on any stage
  virtual void scale_grads(float s) = 0;            // gradients *= s (unscaling, clipping)
  virtual double grad_norm() = 0;                   // the whole model's, on every rank
  virtual void adamw(float lr) = 0;                 // one AdamW update from the gradients
  // clip_and_update (optimizer.h) over scale_grads and adamw; the GPU folds both into one launch.
  virtual bool update(float lr, double norm);
  virtual void refresh_weights() {}  // after an update: the low-precision weight copies

  const TrainConfig& cfg_;
  dist::ProcessGroups& groups_;
  int B_, T_, Bl_, row0_;               // the global micro-batch, sequence length, this rank's rows
  std::vector<int32_t> ids_, targets_;  // (B, T): the global micro-batch
};

template <class Micro>
double StepRunner::accumulate(BatchSource& data, double scale, Micro&& micro) {
  const int accum = cfg_.train.grad_accum;
  const size_t off = size_t(row0_) * T_;
  double loss = 0;
  for (int i = 0; i < accum; ++i) {
    data.next(B_, ids_.data(), targets_.data());
    set_positions(data.positions() ? data.positions() + off : nullptr);
    // The loss is a mean over the global batch's counted tokens: weight this rank's mean.
    int64_t total = 0, local = 0;
    for (size_t j = 0; j < targets_.size(); ++j) total += targets_[j] >= 0;
    for (size_t j = off; j < off + size_t(Bl_) * T_; ++j) local += targets_[j] >= 0;
    const double w = total > 0 ? double(local) / double(total) : 0.0;
    loss += w * micro(i, ids_.data() + off, targets_.data() + off, float(scale / accum * w));
  }
  return loss;
}

inline AdamWConfig adamw_config(const TrainConfig& cfg) {
  return {cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps, cfg.optim.weight_decay};
}

// The runner of cfg's layout on this rank, over `whole` (built or loaded identically on every
// rank) and its optimizer state `opt` (a resumed run's; null for a fresh start): it keeps this
// rank's part (its tensor-parallel shard, then its pipeline stage of that). With method lora,
// `whole` is the frozen base and `opt` is null (a resumed run loads the adapter's state into
// adapter()).
std::unique_ptr<StepRunner> make_step_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             std::unique_ptr<Model> whole,
                                             std::unique_ptr<AdamW> opt);

}  // namespace kiln

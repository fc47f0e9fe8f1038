// The StepRunner implementations (step_runner.h), each in its own file, and what they share.
// Internal to train/: the trainer sees only make_step_runner.
#pragma once

#include <memory>

#include "kiln/train/step_runner.h"

namespace kiln {

// What make_step_runner hands every runner: the part this rank trains and its optimizer state.
struct RunnerPart {
  std::unique_ptr<Model> model;            // the whole model, a tp shard, or a stage (of one)
  std::unique_ptr<AdamW> opt;              // its AdamW state (null: a fresh start, whole model)
  std::unique_ptr<TensorParallelMap> tpm;  // null without tensor parallelism
  TrainOptions topt;                       // precision, recompute, tp group
  ModelConfig whole_cfg;                   // the whole model's configuration
};

std::unique_ptr<StepRunner> make_zero_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             RunnerPart part);
std::unique_ptr<StepRunner> make_part_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             RunnerPart part);
std::unique_ptr<StepRunner> make_lora_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             std::unique_ptr<Model> base);
std::unique_ptr<StepRunner> make_expert_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                               RunnerPart part);
std::unique_ptr<StepRunner> make_gpu_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                            RunnerPart part);

// The whole model and its optimizer state on world rank 0, from the parts this rank's layout
// holds: rank 0's pipeline group gathers its stages, then its tensor-parallel group the shards.
// Collective over those groups; other ranks return an empty result.
GatheredModel gather_part(const Model& m, AdamW& opt, const AdamWConfig& cfg,
                          const ModelConfig& whole_cfg, const TensorParallelMap* tpm,
                          const dist::ProcessGroups& g);

}  // namespace kiln

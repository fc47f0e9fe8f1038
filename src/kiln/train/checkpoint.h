// Training checkpoints: RUN_DIR/checkpoints/step_NNNNNNNN/ holds a complete Hugging Face model
// directory (config.json, model.safetensors, tokenizer.json) plus optimizer.safetensors (AdamW
// moments) and trainer_state.json (step, loader position). The directory is written under a
// temporary name and renamed when complete, so a run killed at any moment leaves only whole
// checkpoints behind.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/data/batch_source.h"
#include "kiln/model/lora.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/optimizer.h"

namespace kiln {

struct TrainerState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  nlohmann::json loader;  // BatchSource::state(): the data stream's position
  double loss_scale = 0;  // fp16's dynamic loss scale (0 when unused)
  int scale_growth = 0, scale_hysteresis = 0;
};

// Writes a checkpoint for state.step; removes the oldest beyond `keep` (0 keeps all).
// Returns its directory.
// With dtype BF16 the model directory holds bf16 weights (half the size, what Hugging Face users
// load) and optimizer.safetensors keeps the fp32 master weights, so resume stays bit-exact.
std::string save_checkpoint(const std::string& run_dir, const Model& model, const Tokenizer& tok,
                            const AdamW& opt, const TrainerState& state, int keep,
                            DType dtype = DType::f32);
// A LoRA run's checkpoint (method lora): the adapter in PEFT's format (adapter_config.json,
// adapter_model.safetensors: what --adapter takes), tokenizer.json, the adapter's AdamW moments
// and trainer_state.json; no base weights.
std::string save_lora_checkpoint(const std::string& run_dir, const LoraWeights& adapter,
                                 const Tokenizer& tok, const AdamW& opt, const TrainerState& state,
                                 int keep);
bool is_lora_checkpoint(const std::string& dir);
// Restores a LoRA checkpoint into `adapter` (laid out for `base`), its moments and the state.
void load_lora_checkpoint(const std::string& dir, const Model& base, LoraWeights& adapter,
                          AdamW& opt, TrainerState& state);
// trainer_state.json (state, and the optimizer's step count) into a checkpoint directory.
void write_trainer_state(const std::string& dir, int64_t optimizer_steps,
                         const TrainerState& state);
// Removes the oldest complete checkpoints of run_dir beyond `keep` (0 keeps all).
void prune_checkpoints(const std::string& run_dir, int keep);
// Whether dir is a sharded checkpoint (has manifest.json, written by train/sharded_checkpoint.h).
bool is_sharded_checkpoint(const std::string& dir);
// Restores weights, optimizer moments and trainer state from a checkpoint directory, gathered or
// sharded (sharded_checkpoint.h), into the whole model.
void load_checkpoint(const std::string& dir, Model& model, AdamW& opt, TrainerState& state);

}  // namespace kiln

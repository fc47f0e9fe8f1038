// A model directory is a Hugging Face checkpoint: config.json + model.safetensors (or shards
// listed in model.safetensors.index.json). Saving is atomic per file; a directory being written
// is not visible under its final name until complete (see train/checkpoint.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/model/transformer.h"

namespace kiln {

// Loads config.json and the weights (F32, BF16 or F16 on disk, or bitsandbytes 4-bit; fp32 in
// memory). Every tensor the config implies must be present with the right shape; errors name the
// file, tensor and fix.
std::unique_ptr<Model> load_model(const std::string& dir);
// Copies weights from a safetensors file (or index) into `model`, checking names and shapes; or
// from a sharded training checkpoint (manifest.json, train/sharded_checkpoint.h).
void load_weights(Model& model, const std::string& dir);
// Whole flat buffers (the model's P floats each) from a sharded checkpoint, reading each shard
// file manifest.json lists once: buffer `flat` takes tensor `tensor` of every shard, placed by the
// runs ([[offset, n], ...]) in its metadata `runs_key`. Every element must come exactly once: a
// missing shard, a shard of another model or a hole is an error naming it.
struct ShardedBuffer {
  const char* tensor;
  const char* runs_key;
  float* flat;
};
void load_sharded_buffers(const std::string& dir, const Model& model,
                          const std::vector<ShardedBuffer>& buffers);
// Writes config.json and model.safetensors into `dir` (created if missing), the weights as F32
// or (rounded to nearest even) BF16.
void save_model(const Model& model, const std::string& dir, DType dtype = DType::f32);
// The same with every projection in NF4 with double quantization, as bitsandbytes' 4-bit
// checkpoints store them (model/bnb4bit.h) and with their quantization_config; load_model reads
// such checkpoints (kiln's or transformers') into fp32 weights equal to the dequantized values.
void save_model_bnb4bit(const Model& model, const std::string& dir);

// A run directory's complete training checkpoints (RUN_DIR/checkpoints/step_NNNNNNNN/ with a
// trainer_state.json, train/checkpoint.h), oldest first; those being written (".tmp") are not.
std::vector<std::string> checkpoint_dirs(const std::string& run_dir);
// The newest complete checkpoint directory in run_dir, or "" if there is none.
std::string latest_checkpoint(const std::string& run_dir);
// A model directory from a path that is a model directory, a checkpoint, or a run directory
// (its newest checkpoint). Throws naming the path when none is found.
std::string resolve_model_dir(const std::string& path);

}  // namespace kiln

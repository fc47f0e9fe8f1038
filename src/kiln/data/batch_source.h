// Where the trainer's batches come from: raw text files (random windows, WindowSampler) or
// Megatron indexed datasets blended by weight (Loader, data/gpt_dataset.h), or random tokens
// (data/mock_source.h). One interface, so the training loop and checkpoints do not care which;
// the position is saved as JSON.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // ids, targets (B,T): the next training batch; targets are ids shifted by one.
  virtual void next(int B, int32_t* ids, int32_t* targets) = 0;
  // Validation batch `index` (deterministic), and how many exist.
  virtual void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const = 0;
  virtual int64_t eval_batches_available(int B) const = 0;
  // The position in the stream: all a checkpoint needs to continue it exactly.
  virtual nlohmann::json state() const = 0;
  virtual void set_state(const nlohmann::json& s) = 0;
  virtual std::string describe() const = 0;  // for the log
  // A packing source (SFT with data.packing) puts several sequences in a row: the position of
  // each token of the last next() batch in its sequence, (B,T), restarting at 0 where a sequence
  // starts (for TrainState::set_positions). Null: one sequence per row (validation batches
  // always are).
  virtual const int32_t* positions() const { return nullptr; }
};

struct DataSpec {
  // Text files (tokenized whole), with a validation file or a tail fraction...
  std::vector<std::string> train_files;
  std::string val_file;
  double val_fraction = 0.05;
  // ...or Megatron indexed datasets: ["0.7", "data/a", "0.3", "data/b"] and a "98,2,0" split.
  std::vector<std::string> blend;
  std::string split = "98,2,0";
  // ...or no files: mock data over this many token ids (> 0; data.mock).
  int mock_vocab = 0;
};

// Opens the source the spec names. train_samples: samples the run will draw (steps * B * accum).
std::unique_ptr<BatchSource> open_batch_source(const DataSpec& spec, const Tokenizer& tok, int T,
                                               uint64_t seed, int64_t train_samples);

}  // namespace kiln

// Token streams for training and evaluation from plain text files. Training samples are random
// windows of T+1 tokens drawn with a seeded generator whose state is the loader position saved
// in checkpoints, so a resumed run sees exactly the samples an unstopped run would.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/rng.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct TokenSplit {
  std::vector<int32_t> train, val;
};

// Tokenizes the files (each followed by the eos token if the tokenizer has one) and splits:
// with `val_file`, it is the validation set; otherwise the last val_fraction of the tokens.
// Errors name an unreadable file and say what to do.
TokenSplit load_text_tokens(const std::vector<std::string>& train_files,
                            const std::string& val_file, double val_fraction, const Tokenizer& tok);

class WindowSampler {
 public:
  // tokens must outlive the sampler; T+1 tokens per window.
  WindowSampler(const std::vector<int32_t>& tokens, int T, uint64_t seed);
  // ids, targets (B,T): windows at random offsets; targets are ids shifted by one.
  void next(int B, int32_t* ids, int32_t* targets);
  // Deterministic evaluation windows: batch `index` of consecutive non-overlapping windows.
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const;
  int64_t eval_batches_available(int B) const;

  // Position, for checkpoints.
  struct State {
    uint64_t rng[4];
    int64_t drawn;
  };
  State state() const;
  void set_state(const State& s);

 private:
  const std::vector<int32_t>& tokens_;
  int T_;
  Rng rng_;
  int64_t drawn_ = 0;
};

}  // namespace kiln

// How well a model predicts a text (kiln eval): mean cross-entropy through the inference forward
// pass (forward_pass.h), in non-overlapping windows, plus the context-free baseline it must beat
// and bits per byte, which compare models with different tokenizers.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct EvalResult {
  double loss = 0;     // mean cross-entropy, nats per predicted token
  int64_t tokens = 0;  // predicted tokens
  int64_t bytes = 0;   // of the text
  // The entropy of the text's own token frequencies: the loss of the best model that ignores
  // context. A model that learned anything beats it.
  double unigram_entropy = 0;
  double perplexity() const;
  double bits_per_byte() const;          // loss * tokens / bytes / ln 2
  double unigram_bits_per_byte() const;  // the same for the unigram baseline
};

// Windows of seq_len tokens (0: the model's context; at most the text's tokens - 1), each a
// fresh sequence predicting its next tokens; the last window is partial. Rows go through the
// CPU forward pass `batch` windows at a time. Throws Error for a text of fewer than 2 tokens.
EvalResult evaluate_text(const Model& model, const Tokenizer& tok, const std::string& text,
                         int seq_len = 0, int batch = 4);

}  // namespace kiln

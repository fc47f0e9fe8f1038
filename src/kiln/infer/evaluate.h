// How well a model predicts a text (kiln eval): mean cross-entropy through the inference forward
// pass (forward_pass.h), in non-overlapping windows, plus the context-free baseline it must beat
// and bits per byte, which compare models with different tokenizers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "kiln/infer/engine.h"
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

// How well a model answers (kiln eval --sft): its greedy reply to each prompt against the
// reference, both cut into whitespace-separated words. Exact match: the same words; word error
// rate: the Levenshtein distance between the word lists over the reference's words (for
// pronunciations, whose words are phonemes, the phoneme error rate).
struct ReplyEval {
  int64_t examples = 0, exact = 0;
  int64_t errors = 0, reference_words = 0;
  std::vector<std::pair<std::string, std::string>> misses;  // (expected, got): the first 5
  double exact_match() const { return examples ? double(exact) / double(examples) : 0; }
  double word_error_rate() const {
    return reference_words ? double(errors) / double(reference_words) : 0;
  }
};

// Levenshtein distance between two word lists (insertions, deletions, substitutions).
int64_t word_edit_distance(const std::vector<std::string>& a, const std::vector<std::string>& b);
std::vector<std::string> split_words(const std::string& text);

// Runs every (prompt, reference) through the engine at once (greedy, up to stop.max_tokens,
// ending at the stop conditions) and scores the replies.
ReplyEval evaluate_replies(Engine& eng, const Tokenizer& tok,
                           const std::vector<std::pair<std::string, std::string>>& items,
                           const StopConditions& stop);

}  // namespace kiln

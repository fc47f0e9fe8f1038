// Byte-level BPE training: count the pre-tokenized pieces of a corpus (across kiln's threads),
// then merge the most frequent adjacent pair until the vocabulary is full. Ids 0..255 are the
// bytes (as in Tokenizer::byte_level, so byte-level ids stay valid), merges follow in order,
// then the special tokens. Deterministic: ties go to the pair with the smaller (left, right) ids.
// Cost: one pass over the text to count, then about (unique pieces x their length) per merge
// touched, which is seconds for a 32k vocabulary on a few MB.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/pattern.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct BpeTrainOptions {
  int32_t vocab_size = 32000;         // total: 256 bytes + merges + specials
  Pattern pattern = Pattern::llama3;  // the pre-tokenizer the vocabulary is trained and used with
  std::vector<std::string> specials;  // added after the merges; the first <|endoftext|>-like is eos
  int64_t min_frequency = 2;          // stop when the best pair occurs fewer times than this
  bool progress = true;               // progress lines on stderr
};

// Trains on documents (each pre-tokenized on its own).
Tokenizer train_bpe(const std::vector<std::string_view>& docs, const BpeTrainOptions& opts);
// Trains on text files, read whole and cut into ~1 MB documents at line ends.
Tokenizer train_bpe_files(const std::vector<std::string>& paths, const BpeTrainOptions& opts);

}  // namespace kiln

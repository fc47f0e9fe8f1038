// `kiln data tokenize`: JSONL / text files -> a Megatron indexed dataset (indexed_dataset.h).
// Documents are read in batches of about `batch_bytes`, parsed and encoded across kiln's thread
// pool (one document per task) and written in input order, so the output does not depend on the
// thread count. Memory: about 3x batch_bytes. Bad lines are counted, reported with file and line
// and skipped (strict: the first one throws); the output appears only when complete.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/data/jsonl.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct TokenizeOptions {
  std::string text_field = "text";  // JSONL field holding the document
  bool append_eos = true;           // end each document with the tokenizer's eos token
  bool strict = false;              // throw on the first bad line instead of skipping it
  int64_t batch_bytes = 16 << 20;   // input bytes per parallel batch
  bool progress = true;             // a progress line on stderr
};

struct TokenizeReport {
  int64_t documents = 0;  // written
  int64_t empty = 0;      // skipped: no text (an empty .txt line, "" in JSONL)
  int64_t tokens = 0;     // written, eos included
  int64_t bytes = 0;      // input bytes read
  double seconds = 0;
  JsonlErrors errors;  // bad lines, by kind, with examples
};

// Tokenizes `inputs` into PREFIX.bin / PREFIX.idx. A file ending in .txt (or .txt.zst) holds one
// document per line; anything else is JSONL with the text in `text_field`. The token dtype is
// uint16 when the vocabulary has fewer than 65500 ids, else int32 (Megatron's rule). Throws if
// append_eos is set and the tokenizer has no eos token.
TokenizeReport tokenize_to_indexed_dataset(const std::vector<std::string>& inputs,
                                           const Tokenizer& tok, const std::string& prefix,
                                           const TokenizeOptions& opts = {});

}  // namespace kiln

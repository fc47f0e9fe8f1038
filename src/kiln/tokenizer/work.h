// Per-thread counts of the steps the encode path takes, so tests can assert linear cost on
// pathological input by counting work instead of timing it. Cost: one thread-local add per piece
// (BPE) or per split call (pre-tokenizer).
#pragma once

#include <cstdint>

namespace kiln::tok {

struct EncodeWork {
  uint64_t split = 0;  // characters the hand-written pre-tokenizer examined (standard_split.h)
  uint64_t bpe = 0;    // BPE steps: pair lookups, ranks scanned, candidates queued and taken,
                       // and elements sorted (counted as n * log2 n)
};

// This thread's counters; reset with `encode_work() = {}`.
EncodeWork& encode_work();

}  // namespace kiln::tok

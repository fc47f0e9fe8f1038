// The limits on what a file may declare (vocabulary, layers, dimensions, context, nesting), in one
// place, and the one check that enforces them. Every count, id, size and offset read from a file
// is checked against these (and against the file's size) before anything is allocated from it,
// so a crafted ten-byte file cannot ask for 64 GB. Each limit sits far above any released model
// (Llama 3.1 405B: V 128256, L 126, C 16384, F 53248, H 128, context 131072) and low enough that
// products of two or three of them (V*C, L*F*C) stay far inside int64.
#pragma once

#include <cstdint>
#include <string_view>

#include "kiln/core/error.h"

namespace kiln::limits {

constexpr int64_t kMaxVocab = int64_t(1) << 24;    // V: token ids run 0 .. kMaxVocab - 1
constexpr int64_t kMaxLayers = 1024;               // L
constexpr int64_t kMaxHidden = int64_t(1) << 16;   // C, and the head dimension D
constexpr int64_t kMaxFfn = int64_t(1) << 18;      // F
constexpr int64_t kMaxHeads = 4096;                // H and K
constexpr int64_t kMaxExperts = 1024;              // a Mixture-of-Experts layer's E
constexpr int64_t kMaxContext = int64_t(1) << 24;  // positions (max_position_embeddings)
constexpr int kMaxJsonDepth = 128;                 // nesting of arrays/objects in any JSON input
constexpr int64_t kMaxIndexEntries = int64_t(1) << 40;  // sequences/documents in a .idx

// Throws unless 0 <= value <= max, naming the file, the field, the value and the limit:
//   [gguf] 'm.gguf': llama.block_count = 2147483000 is over kiln's limit of 1024 (core/limits.h)
inline void check_limit(const char* op, std::string_view file, std::string_view field,
                        int64_t value, int64_t max) {
  KILN_CHECK(value >= 0, op, file, ": ", field, " = ", value, " is negative: the file is corrupt");
  KILN_CHECK(value <= max, op, file, ": ", field, " = ", value, " is over kiln's limit of ", max,
             " (core/limits.h): the file is corrupt or crafted");
}

}  // namespace kiln::limits

// Training data without files (data.mock, Megatron's --mock-data): every sequence is T+1 uniform
// random token ids drawn from the seed and the sequence's index, so any rank or any restart
// produces the same stream and a position is just the count of sequences drawn. Nothing can be
// learned from it (the loss stays near ln V); it exists to run and time the parallel layouts.
#pragma once

#include <cstdint>
#include <memory>

#include "kiln/data/batch_source.h"

namespace kiln {

// vocab: ids in [0, vocab); T: the sequence length; val_sequences: the validation set's size.
std::unique_ptr<BatchSource> make_mock_source(int vocab, int T, uint64_t seed,
                                              int64_t val_sequences = 256);

}  // namespace kiln

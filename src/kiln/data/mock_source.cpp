#include "kiln/data/mock_source.h"

#include "kiln/core/error.h"
#include "kiln/core/rng.h"

namespace kiln {

namespace {

class MockSource : public BatchSource {
 public:
  MockSource(int vocab, int T, uint64_t seed, int64_t val_sequences)
      : vocab_(vocab), T_(T), val_sequences_(val_sequences) {
    KILN_CHECK(vocab > 0 && T > 0, "data", "mock data needs a vocabulary and a sequence length, ",
               "got vocab ", vocab, ", T ", T, "; set model.vocab_size and train.seq_len");
    // Separate streams for training and validation sequences, both from the run's seed.
    Rng r(seed);
    train_base_ = r.next_u64();
    val_base_ = r.next_u64();
  }
  void next(int B, int32_t* ids, int32_t* targets) override {
    for (int b = 0; b < B; ++b) sequence(train_base_ + drawn_++, ids + b * T_, targets + b * T_);
  }
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const override {
    KILN_CHECK(index >= 0 && index < eval_batches_available(B), "data", "mock validation batch ",
               index, " of ", B, " sequences is past the ", val_sequences_,
               " validation sequences");
    for (int b = 0; b < B; ++b)
      sequence(val_base_ + int64_t(index) * B + b, ids + b * T_, targets + b * T_);
  }
  int64_t eval_batches_available(int B) const override { return val_sequences_ / B; }
  nlohmann::json state() const override { return {{"mock_drawn", drawn_}}; }
  void set_state(const nlohmann::json& j) override {
    KILN_CHECK(j.contains("mock_drawn"), "data", "the checkpoint's loader state (", j.dump(),
               ") is not mock data's: was the run started with data files instead of data.mock?");
    drawn_ = j["mock_drawn"].get<int64_t>();
  }
  std::string describe() const override {
    return str("mock: uniform random tokens over ", vocab_, " ids, ", val_sequences_,
               " validation sequences of ", T_);
  }

 private:
  // Sequence `key`: T+1 ids; the targets are the ids shifted by one.
  void sequence(uint64_t key, int32_t* ids, int32_t* targets) const {
    Rng r(key);
    int32_t prev = int32_t(r.below(uint64_t(vocab_)));
    for (int t = 0; t < T_; ++t) {
      ids[t] = prev;
      prev = int32_t(r.below(uint64_t(vocab_)));
      targets[t] = prev;
    }
  }

  int vocab_, T_;
  int64_t val_sequences_;
  uint64_t train_base_ = 0, val_base_ = 0;
  int64_t drawn_ = 0;  // training sequences drawn
};

}  // namespace

std::unique_ptr<BatchSource> make_mock_source(int vocab, int T, uint64_t seed,
                                              int64_t val_sequences) {
  return std::make_unique<MockSource>(vocab, T, seed, val_sequences);
}

}  // namespace kiln

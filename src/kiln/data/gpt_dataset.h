// Training samples from Megatron indexed datasets, structured like Megatron-LM's GPTDataset and
// BlendedDataset (megatron/core/datasets/gpt_dataset.py, blended_dataset.py, helpers.cpp):
//   document index: the split's documents repeated for enough epochs, shuffled with a seed
//   sample index:   (position in the document index, token offset) where each sample starts;
//                   a sample is T+1 consecutive tokens crossing document boundaries, and the
//                   next sample starts on the last token of this one (Megatron's extra token)
//   shuffle index:  a seeded permutation of the samples
//   blending:       sample i of the blend comes from the dataset whose realized share lags its
//                   weight the most (Megatron's error-minimizing build_blending_indices)
// Same structure and determinism as Megatron; not bit-compatible with numpy's RandomState
// (kiln::Rng drives the shuffles). The whole stream is a pure function of (files, split, T,
// seed, sizes), so the loader's only state is an integer position.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/data/indexed_dataset.h"

namespace kiln {

enum class Split { train = 0, valid = 1, test = 2 };

// "98,2,0" (or "0.98,0.02") -> fractions summing to 1; missing trailing parts are 0.
std::array<double, 3> parse_split(const std::string& s);
// Megatron's _get_split_indices: document bounds [0, a, b, n] per split (round half to even,
// the rounding excess taken from the splits' ends).
std::array<int64_t, 4> split_document_bounds(const std::array<double, 3>& split, int64_t n);

// ["0.7", "data/a", "0.3", "data/b"] -> {(0.7, "data/a"), (0.3, "data/b")}; a lone ["data/a"]
// is weight 1. Weights are normalized to sum to 1.
std::vector<std::pair<double, std::string>> parse_blend(const std::vector<std::string>& items);

// Fixed-length samples over documents [doc_begin, doc_end) of one indexed dataset.
// Memory: 4 bytes per document per epoch + 24 bytes per sample. Build cost: O(samples + docs).
class GptDataset {
 public:
  // Enough epochs for at least `num_samples` samples (<= 0: one epoch). Throws if the range
  // holds fewer than T+1 tokens.
  GptDataset(std::shared_ptr<const IndexedDataset> ds, int64_t doc_begin, int64_t doc_end, int T,
             int64_t num_samples, uint64_t seed);

  int64_t size() const { return int64_t(shuffle_.size()); }  // samples, >= num_samples
  int T() const { return T_; }
  int epochs() const { return epochs_; }
  int64_t tokens_per_epoch() const { return tokens_per_epoch_; }
  // Sample i (0 <= i < size()): T+1 tokens into out.
  void sample(int64_t i, int32_t* out) const;
  // Unshuffled sample j (order of the sample index), for tests.
  void sample_unshuffled(int64_t j, int32_t* out) const;

 private:
  std::shared_ptr<const IndexedDataset> ds_;
  int T_, epochs_ = 1;
  int64_t tokens_per_epoch_ = 0;
  std::vector<int32_t> doc_index_;   // (epochs * docs) sequence ids, shuffled
  std::vector<int64_t> sample_idx_;  // (samples + 1, 2): doc_index_ position, offset
  std::vector<int64_t> shuffle_;     // (samples)
};

// Samples drawn from several GptDatasets by weight: `size` samples, dataset k contributing
// about weights[k] * size (exactly the error-minimizing assignment, in a fixed order).
class BlendedDataset {
 public:
  BlendedDataset(std::vector<std::shared_ptr<const GptDataset>> parts, std::vector<double> weights,
                 int64_t size);
  int64_t size() const { return int64_t(dataset_index_.size()); }
  int T() const { return parts_[0]->T(); }
  void sample(int64_t i, int32_t* out) const;  // T+1 tokens
  int dataset_of(int64_t i) const { return dataset_index_[size_t(i)]; }
  int num_datasets() const { return int(parts_.size()); }

 private:
  std::vector<std::shared_ptr<const GptDataset>> parts_;
  std::vector<int16_t> dataset_index_;         // (size)
  std::vector<int64_t> dataset_sample_index_;  // (size)
};

struct LoaderConfig {
  std::vector<std::pair<double, std::string>> blend;  // (weight, indexed-dataset prefix)
  std::array<double, 3> split{0.98, 0.02, 0.0};       // train, valid, test fractions
  int T = 256;
  uint64_t seed = 1234;
  // Training samples the run will draw (steps * B). <= 0: one epoch's worth of the blend.
  // Positions past the end wrap around (the stream repeats).
  int64_t train_samples = 0;
};

// Batches for the trainer, same shape as WindowSampler: train batches in order of a position,
// validation batches by index. The position is the whole state a checkpoint needs.
class Loader {
 public:
  explicit Loader(const LoaderConfig& cfg);

  // ids, targets (B,T): samples position .. position+B-1 of the training blend; targets are
  // ids shifted by one. Advances the position by B.
  void next(int B, int32_t* ids, int32_t* targets);
  // Validation batch `index`: samples index*B .. of the validation blend.
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const;
  int64_t eval_batches_available(int B) const;

  struct State {
    int64_t position = 0;  // training samples drawn so far
  };
  State state() const { return {position_}; }
  void set_state(const State& s) { position_ = s.position; }

  int T() const { return T_; }
  const BlendedDataset& train() const { return *train_; }
  const BlendedDataset* valid() const { return valid_.get(); }  // null if no valid split

 private:
  int T_;
  int64_t position_ = 0;
  std::unique_ptr<BlendedDataset> train_, valid_;
  std::vector<int32_t> buf_;  // (T+1)
};

}  // namespace kiln

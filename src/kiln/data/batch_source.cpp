#include "kiln/data/batch_source.h"

#include "kiln/core/error.h"
#include "kiln/data/gpt_dataset.h"
#include "kiln/data/mock_source.h"
#include "kiln/data/text_dataset.h"

namespace kiln {

namespace {

class TextSource : public BatchSource {
 public:
  TextSource(const DataSpec& spec, const Tokenizer& tok, int T, uint64_t seed)
      : data_(load_text_tokens(spec.train_files, spec.val_file, spec.val_fraction, tok)),
        train_(data_.train, T, seed + 1) {
    if (int64_t(data_.val.size()) > T) val_ = std::make_unique<WindowSampler>(data_.val, T, 0);
  }
  void next(int B, int32_t* ids, int32_t* targets) override { train_.next(B, ids, targets); }
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const override {
    val_->eval_batch(index, B, ids, targets);
  }
  int64_t eval_batches_available(int B) const override {
    return val_ ? val_->eval_batches_available(B) : 0;
  }
  nlohmann::json state() const override {
    WindowSampler::State s = train_.state();
    nlohmann::json j;
    // 64-bit generator words as strings: JSON numbers are doubles in many readers.
    for (uint64_t w : s.rng) j["rng"].push_back(std::to_string(w));
    j["drawn"] = s.drawn;
    return j;
  }
  void set_state(const nlohmann::json& j) override {
    WindowSampler::State s;
    KILN_CHECK(j.contains("rng") && j["rng"].size() == 4 && j.contains("drawn"), "data",
               "the checkpoint's loader state is not a text-window sampler's (", j.dump(),
               "): was the run started with data.blend?");
    for (int i = 0; i < 4; ++i) s.rng[i] = std::stoull(j["rng"][i].get<std::string>());
    s.drawn = j["drawn"].get<int64_t>();
    train_.set_state(s);
  }
  std::string describe() const override {
    return str(data_.train.size(), " training tokens, ", data_.val.size(), " validation tokens");
  }

 private:
  TokenSplit data_;
  WindowSampler train_;
  std::unique_ptr<WindowSampler> val_;
};

class IndexedSource : public BatchSource {
 public:
  IndexedSource(const DataSpec& spec, int T, uint64_t seed, int64_t train_samples)
      : loader_(config(spec, T, seed, train_samples)) {}
  void next(int B, int32_t* ids, int32_t* targets) override { loader_.next(B, ids, targets); }
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const override {
    loader_.eval_batch(index, B, ids, targets);
  }
  int64_t eval_batches_available(int B) const override { return loader_.eval_batches_available(B); }
  nlohmann::json state() const override { return {{"position", loader_.state().position}}; }
  void set_state(const nlohmann::json& j) override {
    KILN_CHECK(j.contains("position"), "data", "the checkpoint's loader state (", j.dump(),
               ") has no position: was the run started with text files instead of data.blend?");
    loader_.set_state({j["position"].get<int64_t>()});
  }
  std::string describe() const override {
    return str(loader_.train().size(), " training samples of ", loader_.T() + 1, " tokens from ",
               loader_.train().num_datasets(), " indexed dataset(s)");
  }

 private:
  static LoaderConfig config(const DataSpec& spec, int T, uint64_t seed, int64_t train_samples) {
    LoaderConfig c;
    c.blend = parse_blend(spec.blend);
    c.split = parse_split(spec.split);
    c.T = T;
    c.seed = seed;
    c.train_samples = train_samples;
    return c;
  }
  Loader loader_;
};

}  // namespace

std::unique_ptr<BatchSource> open_batch_source(const DataSpec& spec, const Tokenizer& tok, int T,
                                               uint64_t seed, int64_t train_samples) {
  if (spec.mock_vocab > 0) return make_mock_source(spec.mock_vocab, T, seed);
  if (!spec.blend.empty()) return std::make_unique<IndexedSource>(spec, T, seed, train_samples);
  return std::make_unique<TextSource>(spec, tok, T, seed);
}

}  // namespace kiln

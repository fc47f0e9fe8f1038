#include "kiln/data/text_dataset.h"

#include "kiln/core/error.h"
#include "kiln/io/file.h"

namespace kiln {

TokenSplit load_text_tokens(const std::vector<std::string>& train_files,
                            const std::string& val_file, double val_fraction,
                            const Tokenizer& tok) {
  auto eos = tok.eos_id();
  auto encode_file = [&](const std::string& path, std::vector<int32_t>& out) {
    KILN_CHECK(file_exists(path), "data", "cannot read training text '", path,
               "': the file does not exist; run scripts/fetch_data.sh or fix data.train");
    std::string text = read_file(path);
    KILN_CHECK(!text.empty(), "data", "training text '", path, "' is empty");
    auto ids = tok.encode(text);
    out.insert(out.end(), ids.begin(), ids.end());
    if (eos) out.push_back(*eos);
  };
  TokenSplit s;
  for (const auto& f : train_files) encode_file(f, s.train);
  if (!val_file.empty()) {
    encode_file(val_file, s.val);
  } else if (val_fraction > 0) {
    size_t n_val = size_t(double(s.train.size()) * val_fraction);
    s.val.assign(s.train.end() - n_val, s.train.end());
    s.train.resize(s.train.size() - n_val);
  }
  return s;
}

WindowSampler::WindowSampler(const std::vector<int32_t>& tokens, int T, uint64_t seed)
    : tokens_(tokens), T_(T), rng_(seed) {
  KILN_CHECK(int64_t(tokens.size()) > T, "data", "the text has ", tokens.size(),
             " tokens, fewer than one window of seq_len+1 = ", T + 1,
             "; use more text or a shorter train.seq_len");
}

void WindowSampler::next(int B, int32_t* ids, int32_t* targets) {
  const uint64_t span = tokens_.size() - T_;  // valid start offsets: [0, size - T - 1]
  for (int b = 0; b < B; ++b) {
    const int32_t* src = tokens_.data() + rng_.below(span);
    for (int t = 0; t < T_; ++t) {
      ids[int64_t(b) * T_ + t] = src[t];
      targets[int64_t(b) * T_ + t] = src[t + 1];
    }
    ++drawn_;
  }
}

int64_t WindowSampler::eval_batches_available(int B) const {
  return int64_t((tokens_.size() - 1) / T_) / B;
}

void WindowSampler::eval_batch(int index, int B, int32_t* ids, int32_t* targets) const {
  for (int b = 0; b < B; ++b) {
    const int32_t* src = tokens_.data() + (int64_t(index) * B + b) * T_;
    for (int t = 0; t < T_; ++t) {
      ids[int64_t(b) * T_ + t] = src[t];
      targets[int64_t(b) * T_ + t] = src[t + 1];
    }
  }
}

WindowSampler::State WindowSampler::state() const {
  State s;
  for (int i = 0; i < 4; ++i) s.rng[i] = rng_.state()[i];
  s.drawn = drawn_;
  return s;
}

void WindowSampler::set_state(const State& s) {
  rng_.set_state(s.rng);
  drawn_ = s.drawn;
}

}  // namespace kiln

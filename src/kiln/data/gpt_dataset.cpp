#include "kiln/data/gpt_dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/rng.h"

namespace kiln {
namespace {

template <typename V>
void shuffle(V* first, int64_t n, Rng& rng) {  // Fisher-Yates, the same on every machine
  for (int64_t i = n - 1; i > 0; --i)
    std::swap(first[i], first[int64_t(rng.below(uint64_t(i + 1)))]);
}

double parse_number(const std::string& s, const char* op, const char* what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KILN_CHECK(used == s.size() && !s.empty() && std::isfinite(v) && v >= 0, op, what, " '", s,
             "' is not a non-negative number");
  return v;
}

}  // namespace

std::array<double, 3> parse_split(const std::string& s) {
  std::array<double, 3> out{0, 0, 0};
  size_t start = 0;
  int k = 0;
  while (true) {
    size_t end = s.find_first_of(",/", start);
    std::string part = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
    KILN_CHECK(k < 3, "data.split", "'", s, "' has more than 3 parts: use train,valid,test");
    out[size_t(k++)] = parse_number(part, "data.split", "part");
    if (end == std::string::npos) break;
    start = end + 1;
  }
  double sum = out[0] + out[1] + out[2];
  KILN_CHECK(sum > 0, "data.split", "'", s, "' sums to 0: give e.g. \"98,2,0\"");
  for (double& v : out) v /= sum;
  return out;
}

std::array<int64_t, 4> split_document_bounds(const std::array<double, 3>& split, int64_t n) {
  std::array<int64_t, 4> b{0, 0, 0, 0};
  for (int i = 0; i < 3; ++i) b[i + 1] = b[i] + int64_t(std::nearbyint(split[i] * double(n)));
  const int64_t excess = b[3] - n;
  for (int i = 1; i < 4; ++i) b[i] = std::clamp<int64_t>(b[i] - excess, 0, n);
  return b;
}

std::vector<std::pair<double, std::string>> parse_blend(const std::vector<std::string>& items) {
  std::vector<std::pair<double, std::string>> out;
  if (items.size() == 1) {
    out.emplace_back(1.0, items[0]);
    return out;
  }
  KILN_CHECK(!items.empty() && items.size() % 2 == 0, "data.blend",
             "expected [weight, prefix, weight, prefix, ...] or [prefix], got ", items.size(),
             " items");
  double sum = 0;
  for (size_t i = 0; i < items.size(); i += 2) {
    double w = parse_number(items[i], "data.blend", "weight");
    KILN_CHECK(w > 0, "data.blend", "weight of '", items[i + 1], "' is 0: drop the dataset");
    out.emplace_back(w, items[i + 1]);
    sum += w;
  }
  for (auto& [w, p] : out) w /= sum;
  return out;
}

// ---- GptDataset ----

GptDataset::GptDataset(std::shared_ptr<const IndexedDataset> ds, int64_t doc_begin, int64_t doc_end,
                       int T, int64_t num_samples, uint64_t seed)
    : ds_(std::move(ds)), T_(T) {
  KILN_CHECK(T >= 1, "gpt_dataset", "T must be at least 1, got ", T);
  KILN_CHECK(0 <= doc_begin && doc_begin <= doc_end && doc_end <= ds_->num_documents(),
             "gpt_dataset", "document range [", doc_begin, ", ", doc_end, ") is outside the ",
             ds_->num_documents(), " documents of ", ds_->prefix());
  // The range's sequences (one per document for kiln-written and preprocess_data.py files).
  const int64_t seq_begin = ds_->document_index(doc_begin), seq_end = ds_->document_index(doc_end);
  const int64_t nseq = seq_end - seq_begin;
  for (int64_t s = seq_begin; s < seq_end; ++s) tokens_per_epoch_ += ds_->sequence_length(s);
  KILN_CHECK(tokens_per_epoch_ >= int64_t(T) + 1, "gpt_dataset", ds_->prefix(), " documents [",
             doc_begin, ", ", doc_end, ") hold ", tokens_per_epoch_,
             " tokens, fewer than one sample of T+1 = ", T + 1,
             ": use more data, a larger split share, or a smaller T");
  KILN_CHECK(seq_end < int64_t(std::numeric_limits<int32_t>::max()), "gpt_dataset", ds_->prefix(),
             " has ", seq_end, " sequences; the document index holds int32 ids");

  // Epochs (Megatron's _get_num_epochs): enough tokens for num_samples samples of T plus the
  // one extra token of the last sample.
  const int64_t want_tokens = num_samples > 0 ? num_samples * int64_t(T) + 1 : 0;
  int64_t tokens = tokens_per_epoch_;
  while (tokens < want_tokens) {
    ++epochs_;
    tokens += tokens_per_epoch_;
  }
  // A final epoch that contributes under 80% of an epoch's samples is shuffled on its own, so
  // its documents do not crowd out whole epochs (Megatron's separate_final_epoch).
  bool separate_final = false;
  int64_t samples_before_final = 0;
  if (epochs_ > 1) {
    samples_before_final = ((epochs_ - 1) * tokens_per_epoch_ - 1) / T;
    const int64_t per_epoch = (tokens_per_epoch_ - 1) / T;
    separate_final = num_samples - samples_before_final < int64_t(0.8 * double(per_epoch));
  }

  Rng rng(seed);
  // Document index: (epochs * nseq) sequence ids, shuffled (whole, or first epochs-1 and the
  // last separately).
  doc_index_.resize(size_t(epochs_ * nseq));
  for (int64_t e = 0; e < epochs_; ++e)
    for (int64_t s = 0; s < nseq; ++s) doc_index_[size_t(e * nseq + s)] = int32_t(seq_begin + s);
  if (separate_final) {
    shuffle(doc_index_.data(), (epochs_ - 1) * nseq, rng);
    shuffle(doc_index_.data() + (epochs_ - 1) * nseq, nseq, rng);
  } else {
    shuffle(doc_index_.data(), int64_t(doc_index_.size()), rng);
  }

  // Sample index (Megatron's build_sample_idx, drop_last_partial_sequence): sample k covers
  // tokens from (doc k, offset k) through (doc k+1, offset k+1) inclusive.
  const int64_t total = (int64_t(epochs_) * tokens_per_epoch_ - 1) / T;
  sample_idx_.resize(size_t(2 * (total + 1)));
  const int64_t ndoc = int64_t(doc_index_.size());
  int64_t d = 0, offset = 0;
  sample_idx_[0] = 0;
  sample_idx_[1] = 0;
  for (int64_t k = 1; k <= total; ++k) {
    int64_t remaining = int64_t(T) + 1;
    while (remaining != 0) {
      const int64_t len = ds_->sequence_length(doc_index_[size_t(d)]) - offset;
      remaining -= len;
      if (remaining <= 0) {
        offset += remaining + len - 1;  // the last token starts the next sample
        remaining = 0;
      } else if (d == ndoc - 1) {
        KILN_DCHECK(k == total);
        offset = ds_->sequence_length(doc_index_[size_t(d)]) - 1;
        break;
      } else {
        ++d;
        offset = 0;
      }
    }
    sample_idx_[size_t(2 * k)] = d;
    sample_idx_[size_t(2 * k + 1)] = offset;
  }

  shuffle_.resize(size_t(total));
  for (int64_t i = 0; i < total; ++i) shuffle_[size_t(i)] = i;
  if (separate_final) {
    const int64_t first = std::min(samples_before_final, total);
    shuffle(shuffle_.data(), first, rng);
    shuffle(shuffle_.data() + first, total - first, rng);
  } else {
    shuffle(shuffle_.data(), total, rng);
  }
}

void GptDataset::sample(int64_t i, int32_t* out) const {
  KILN_CHECK(i >= 0 && i < size(), "gpt_dataset", "sample ", i, " out of range (", size(), ")");
  sample_unshuffled(shuffle_[size_t(i)], out);
}

void GptDataset::sample_unshuffled(int64_t j, int32_t* out) const {
  const int64_t d0 = sample_idx_[size_t(2 * j)], o0 = sample_idx_[size_t(2 * j + 1)];
  const int64_t d1 = sample_idx_[size_t(2 * j + 2)], o1 = sample_idx_[size_t(2 * j + 3)];
  int64_t n = 0;
  if (d0 == d1) {
    ds_->read(doc_index_[size_t(d0)], o0, o1 - o0 + 1, out);
    n = o1 - o0 + 1;
  } else {
    for (int64_t d = d0; d <= d1; ++d) {
      const int64_t seq = doc_index_[size_t(d)];
      const int64_t b = d == d0 ? o0 : 0, e = d == d1 ? o1 + 1 : ds_->sequence_length(seq);
      ds_->read(seq, b, e - b, out + n);
      n += e - b;
    }
  }
  KILN_DCHECK(n == T_ + 1);
  (void)n;
}

// ---- BlendedDataset ----

BlendedDataset::BlendedDataset(std::vector<std::shared_ptr<const GptDataset>> parts,
                               std::vector<double> weights, int64_t size)
    : parts_(std::move(parts)) {
  const size_t n = parts_.size();
  KILN_CHECK(n >= 1 && n == weights.size() && n <= 32767, "blended_dataset", "need 1 to 32767 ",
             "datasets with one weight each, got ", n, " datasets and ", weights.size(),
             " weights");
  double sum = 0;
  for (double w : weights) sum += w;
  KILN_CHECK(sum > 0, "blended_dataset", "weights sum to 0");
  for (double& w : weights) w /= sum;
  for (const auto& p : parts_)
    KILN_CHECK(p->T() == parts_[0]->T(), "blended_dataset", "datasets disagree on T: ", p->T(),
               " vs ", parts_[0]->T());
  // Megatron's build_blending_indices: each sample goes to the dataset furthest behind its
  // weight (ties to the lowest index).
  dataset_index_.resize(size_t(size));
  dataset_sample_index_.resize(size_t(size));
  std::vector<int64_t> taken(n, 0);
  for (int64_t i = 0; i < size; ++i) {
    const double x = std::max(double(i), 1.0);
    size_t best = 0;
    double best_err = weights[0] * x - double(taken[0]);
    for (size_t k = 1; k < n; ++k) {
      const double err = weights[k] * x - double(taken[k]);
      if (err > best_err) best_err = err, best = k;
    }
    dataset_index_[size_t(i)] = int16_t(best);
    dataset_sample_index_[size_t(i)] = taken[best]++;
  }
}

void BlendedDataset::sample(int64_t i, int32_t* out) const {
  KILN_CHECK(i >= 0 && i < size(), "blended_dataset", "sample ", i, " out of range (", size(), ")");
  const GptDataset& part = *parts_[size_t(dataset_index_[size_t(i)])];
  part.sample(dataset_sample_index_[size_t(i)] % part.size(), out);  // wraps if sized short
}

// ---- Loader ----

namespace {

// Samples a blend can give when each dataset gives at most its own size: min_k size_k / w_k.
int64_t blend_capacity(const std::vector<std::shared_ptr<const GptDataset>>& parts,
                       const std::vector<double>& w) {
  int64_t cap = std::numeric_limits<int64_t>::max();
  for (size_t k = 0; k < parts.size(); ++k)
    cap = std::min(cap, int64_t(std::floor(double(parts[k]->size()) / w[k])));
  return std::max<int64_t>(cap, 1);
}

}  // namespace

Loader::Loader(const LoaderConfig& cfg) : T_(cfg.T) {
  KILN_CHECK(!cfg.blend.empty(), "loader",
             "data.blend is empty: give [prefix] or "
             "[weight, prefix, ...]");
  std::vector<std::shared_ptr<const GptDataset>> train_parts, valid_parts;
  std::vector<double> train_w, valid_w;
  for (const auto& [w, prefix] : cfg.blend) {
    auto ds = IndexedDataset::open(prefix);
    const auto b = split_document_bounds(cfg.split, ds->num_documents());
    // Megatron's per-dataset target: ceil(ceil(N * w) * 1.005), a margin so the blend never
    // runs a dataset dry.
    const int64_t want = cfg.train_samples > 0
                             ? int64_t(std::ceil(std::ceil(double(cfg.train_samples) * w) * 1.005))
                             : 0;
    KILN_CHECK(b[1] > b[0], "loader", prefix, " has ", ds->num_documents(),
               " documents: its train split (", cfg.split[0], ") is empty");
    train_parts.push_back(std::make_shared<GptDataset>(ds, b[0], b[1], T_, want, cfg.seed));
    train_w.push_back(w);
    int64_t valid_tokens = 0;
    for (int64_t s = ds->document_index(b[1]); s < ds->document_index(b[2]); ++s)
      valid_tokens += ds->sequence_length(s);
    if (valid_tokens >= int64_t(T_) + 1) {
      valid_parts.push_back(std::make_shared<GptDataset>(ds, b[1], b[2], T_, 0, cfg.seed));
      valid_w.push_back(w);
    } else if (cfg.split[1] > 0) {
      log_warn("[loader] ", prefix, ": validation split has ", valid_tokens,
               " tokens, fewer than T+1 = ", T_ + 1, "; left out of validation");
    }
  }
  double sum = 0;
  for (double w : train_w) sum += w;
  for (double& w : train_w) w /= sum;
  const int64_t n_train =
      cfg.train_samples > 0 ? cfg.train_samples : blend_capacity(train_parts, train_w);
  train_ = std::make_unique<BlendedDataset>(train_parts, train_w, n_train);
  if (!valid_parts.empty()) {
    sum = 0;
    for (double w : valid_w) sum += w;
    for (double& w : valid_w) w /= sum;
    valid_ = std::make_unique<BlendedDataset>(valid_parts, valid_w,
                                              blend_capacity(valid_parts, valid_w));
  }
  buf_.resize(size_t(T_) + 1);
}

namespace {
void fill_batch(const BlendedDataset& ds, int64_t first, int B, int T, int32_t* ids,
                int32_t* targets, int32_t* buf) {
  for (int b = 0; b < B; ++b) {
    ds.sample((first + b) % ds.size(), buf);
    std::copy(buf, buf + T, ids + int64_t(b) * T);
    std::copy(buf + 1, buf + T + 1, targets + int64_t(b) * T);
  }
}
}  // namespace

void Loader::next(int B, int32_t* ids, int32_t* targets) {
  fill_batch(*train_, position_, B, T_, ids, targets, buf_.data());
  position_ += B;
}

void Loader::eval_batch(int index, int B, int32_t* ids, int32_t* targets) const {
  KILN_CHECK(valid_ != nullptr, "loader", "no validation split: set data.split, e.g. \"98,2,0\"");
  std::vector<int32_t> buf(size_t(T_) + 1);
  fill_batch(*valid_, int64_t(index) * B, B, T_, ids, targets, buf.data());
}

int64_t Loader::eval_batches_available(int B) const {
  return valid_ ? valid_->size() / std::max(B, 1) : 0;
}

}  // namespace kiln

#include "kiln/data/minhash.h"

#include <algorithm>
#include <string>

#include "kiln/core/error.h"
#include "kiln/data/curate_text.h"

namespace kiln::curate {

MinHasher::MinHasher(const MinHashConfig& cfg) : cfg_(cfg) {
  KILN_CHECK(cfg.ngram >= 1 && cfg.bands >= 1 && cfg.rows >= 1, "minhash",
             "ngram, bands and rows must be >= 1, got ", cfg.ngram, ", ", cfg.bands, ", ",
             cfg.rows);
  int n = num_hashes();
  a_.resize(size_t(n));
  b_.resize(size_t(n));
  uint64_t x = cfg.seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (int k = 0; k < n; ++k) {  // splitmix64: odd multipliers, any offsets
    auto next = [&x] {
      uint64_t z = (x += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      return z ^ (z >> 31);
    };
    a_[size_t(k)] = next() | 1;
    b_[size_t(k)] = next();
  }
}

void MinHasher::signature(std::string_view text, uint32_t* sig) const {
  thread_local std::vector<std::string_view> words;
  split_words(text, words);
  signature(words, sig);
}

void MinHasher::signature(const std::vector<std::string_view>& words, uint32_t* sig) const {
  thread_local std::vector<uint64_t> wh;
  thread_local std::string lower;
  wh.clear();
  for (auto w : words) {
    if (is_punct_token(w)) continue;
    // Most words have no capital: hash those in place, copy only the others.
    if (cfg_.lowercase &&
        std::any_of(w.begin(), w.end(), [](char c) { return c >= 'A' && c <= 'Z'; })) {
      lower.assign(w);
      for (char& c : lower)
        if (c >= 'A' && c <= 'Z') c = char(c + 32);
      w = lower;
    }
    wh.push_back(hash64(w));
  }
  const int H = num_hashes();
  std::fill(sig, sig + H, UINT32_MAX);
  if (wh.empty()) return;
  size_t n = size_t(cfg_.ngram);
  size_t shingles = wh.size() >= n ? wh.size() - n + 1 : 1;
  size_t width = std::min(n, wh.size());
  const uint64_t* a = a_.data();
  const uint64_t* b = b_.data();
  for (size_t i = 0; i < shingles; ++i) {
    uint64_t h = wh[i];
    for (size_t k = 1; k < width; ++k) h = hash_combine(h, wh[i + k]);
    // The inner loop is what -march=native vectorizes (8 x 64-bit lanes with AVX-512).
    for (int k = 0; k < H; ++k) {
      uint32_t v = uint32_t((a[k] * h + b[k]) >> 32);
      sig[k] = v < sig[k] ? v : sig[k];
    }
  }
}

void MinHasher::band_hashes(const uint32_t* sig, uint64_t* band_hash) const {
  for (int band = 0; band < cfg_.bands; ++band)
    band_hash[band] =
        hash64(sig + band * cfg_.rows, sizeof(uint32_t) * size_t(cfg_.rows), uint64_t(band) + 1);
}

uint32_t LshClusters::find(uint32_t i) {
  while (parent_[i] != i) {
    parent_[i] = parent_[parent_[i]];
    i = parent_[i];
  }
  return i;
}

void LshClusters::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(std::max<size_t>(1024, old.size() * 2), Slot{0, 0});
  size_t mask = slots_.size() - 1;
  for (auto& s : old) {
    if (!s.key) continue;
    size_t j = s.key & mask;
    while (slots_[j].key) j = (j + 1) & mask;
    slots_[j] = s;
  }
}

uint32_t LshClusters::add(const uint64_t* band_hash) {
  KILN_CHECK(parent_.size() < UINT32_MAX, "minhash",
             "more than 4 billion documents in one run: ", "split the input");
  uint32_t id = uint32_t(parent_.size());
  parent_.push_back(id);
  for (int band = 0; band < bands_; ++band) {
    if (2 * (used_ + 1) > slots_.size()) grow();
    uint64_t key = hash_combine(band_hash[band], uint64_t(band)) | 1;
    size_t mask = slots_.size() - 1, j = key & mask;
    while (slots_[j].key && slots_[j].key != key) j = (j + 1) & mask;
    if (!slots_[j].key) {
      slots_[j] = {key, id};
      ++used_;
      continue;
    }
    // Union with the bucket's first document; the smaller id becomes the root, so each
    // cluster's root is its first document.
    uint32_t ra = find(slots_[j].doc), rb = find(id);
    if (ra != rb) parent_[std::max(ra, rb)] = std::min(ra, rb);
  }
  return id;
}

void LshClusters::finish() {
  std::vector<uint32_t> members(parent_.size(), 0);
  for (uint32_t i = 0; i < parent_.size(); ++i) parent_[i] = find(i);
  for (uint32_t i = 0; i < parent_.size(); ++i) ++members[parent_[i]];
  clusters_ = duplicates_ = 0;
  for (uint32_t i = 0; i < parent_.size(); ++i) {
    if (parent_[i] != i)
      ++duplicates_;
    else if (members[i] > 1)
      ++clusters_;
  }
  slots_ = {};
}

}  // namespace kiln::curate

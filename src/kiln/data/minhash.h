// Fuzzy deduplication: MinHash signatures over word n-grams, LSH banding (bands x rows), and
// clusters of candidate pairs by union-find, keeping the first document of each cluster.
// Two documents with n-gram Jaccard similarity s share at least one band bucket with probability
// 1 - (1 - s^rows)^bands: for 14 x 8, 0.92 at s = 0.8, 0.99 at s = 0.85, 0.001 at s = 0.3.
// Cost: signature = (words + bands*rows * shingles) multiply-adds (vectorized over the hashes);
// the index holds one 16-byte slot per (document, band) at load <= 0.5.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace kiln::curate {

struct MinHashConfig {
  int ngram = 5;          // words per shingle
  int bands = 14;         // LSH bands
  int rows = 8;           // hashes per band; bands * rows hashes in all
  uint64_t seed = 1;      // fixes the hash functions
  bool lowercase = true;  // shingles of lower-cased words (ASCII), punctuation tokens dropped
};

class MinHasher {
 public:
  explicit MinHasher(const MinHashConfig& cfg);
  int num_hashes() const { return cfg_.bands * cfg_.rows; }
  // sig (bands*rows): the minimum over shingles of each hash function. Shingles are n
  // consecutive words of curate::split_words without punctuation tokens; a text with fewer words
  // is one shingle; a text with no words has the all-ones signature.
  void signature(std::string_view text, uint32_t* sig) const;
  // The same from the text's split_words, when the caller has it.
  void signature(const std::vector<std::string_view>& words, uint32_t* sig) const;
  // band_hash (bands): one 64-bit hash per band of `rows` signature values.
  void band_hashes(const uint32_t* sig, uint64_t* band_hash) const;
  const MinHashConfig& config() const { return cfg_; }

 private:
  MinHashConfig cfg_;
  std::vector<uint64_t> a_, b_;  // hash k of shingle h: (a_k * h + b_k) >> 32
};

// The LSH index and the clusters: add documents in input order, then finish() and ask which to
// keep. A document is linked (union) with the first document of every bucket it falls in, so
// clusters are the connected components of the candidate-pair graph.
class LshClusters {
 public:
  explicit LshClusters(int bands) : bands_(bands) {}
  // Adds the next document (id = number of documents added before it).
  uint32_t add(const uint64_t* band_hash);
  // Resolves every document's cluster; call once, after the last add().
  void finish();
  uint32_t size() const { return uint32_t(parent_.size()); }
  // The first document of i's cluster (i itself if i is kept).
  uint32_t root(uint32_t i) const { return parent_[i]; }
  bool kept(uint32_t i) const { return parent_[i] == i; }
  int64_t clusters() const { return clusters_; }      // clusters with two or more documents
  int64_t duplicates() const { return duplicates_; }  // documents not kept

 private:
  uint32_t find(uint32_t i);
  void grow();
  int bands_;
  std::vector<uint32_t> parent_;
  struct Slot {
    uint64_t key;  // 0 = empty
    uint32_t doc;
  };
  std::vector<Slot> slots_;
  size_t used_ = 0;
  int64_t clusters_ = 0, duplicates_ = 0;
};

}  // namespace kiln::curate

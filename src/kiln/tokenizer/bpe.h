// The BPE merge core over byte strings. A vocabulary maps byte strings to ids; each merge gives an
// adjacent pair (left id, right id) a rank and the id it becomes. Encoding a piece merges the
// lowest-ranked adjacent pair, leftmost first, until none is left (tiktoken's and Hugging Face's
// rule). Cost: O(n^2) with tiny constants on pieces up to kLongPiece bytes; beyond, a linked list
// with the candidate pairs grouped by rank, O(n) steps plus a heap over the distinct ranks, so a
// pathological piece (1 MB without a space) costs a bounded number of steps per byte (counted in
// work.h's EncodeWork).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::tok {

uint64_t hash_bytes(std::string_view s);

// Open-addressing map from byte strings to ids; the strings live in the owner's vector, which
// every call passes (so moving the owner never leaves a dangling pointer here).
class BytesMap {
 public:
  void build(const std::vector<std::string>& tokens);
  // Id of `s` in `tokens` (the vector build() saw), or -1.
  int32_t find(std::string_view s, const std::vector<std::string>& tokens) const;

 private:
  // 16 bytes: a lookup of a token of up to 8 bytes touches one cache line and never the strings.
  struct Slot {
    uint32_t tag;   // high hash bits << 8 | min(length, 255): most mismatches end here
    int32_t id;     // -1: empty
    uint64_t head;  // the first 8 bytes, zero-padded
  };
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

class Bpe {
 public:
  static constexpr size_t kLongPiece = 128;
  static constexpr int32_t kNoRank = INT32_MAX;

  Bpe() = default;
  // tokens[id] = the bytes of token id; "" marks an id that is not a BPE token (a special).
  explicit Bpe(std::vector<std::string> tokens);

  void add_merge(int32_t left, int32_t right, int32_t merged, int32_t rank);
  // tiktoken's rule: a merge's rank is the id of the token it makes; adds every split of every
  // token into two tokens.
  void merges_from_ranks();
  // A piece that is itself a token is emitted whole, before any merge (tiktoken always does
  // this; Hugging Face when the model says "ignore_merges": true, as Llama 3 does).
  void set_ignore_merges(bool on);
  bool ignore_merges() const { return ignore_merges_; }

  // Appends the ids of `piece`. Every byte must have a single-byte token. Pieces of 2 to 14
  // bytes go through a per-thread cache of 2 MB (text repeats its words).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  int32_t find(std::string_view bytes) const { return map_.find(bytes, tokens_); }
  int32_t byte_id(uint8_t b) const { return byte_id_[b]; }
  const std::string& token(int32_t id) const { return tokens_[size_t(id)]; }
  const std::vector<std::string>& tokens() const { return tokens_; }
  int32_t size() const { return int32_t(tokens_.size()); }
  size_t num_merges() const { return num_merges_; }
  // {left, right, merged} in rank order (what tokenizer.json's "merges" lists).
  std::vector<std::array<int32_t, 3>> merges_by_rank() const;

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  Merge lookup(int32_t left, int32_t right) const;
  void insert(uint64_t key, Merge m);
  void grow();
  void encode_uncached(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_merges(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_small(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_long(std::string_view piece, std::vector<int32_t>& out) const;

  struct PairSlot {
    uint64_t key;  // left << 32 | right; kEmpty when free
    Merge m;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  std::vector<std::string> tokens_;
  BytesMap map_;
  std::array<int32_t, 256> byte_id_{};
  std::vector<PairSlot> pairs_;
  uint64_t pair_mask_ = 0;
  size_t num_merges_ = 0;
  bool ignore_merges_ = false;
  uint32_t cache_owner_ = 0;  // tags this vocabulary's entries in the per-thread piece cache
};

}  // namespace kiln::tok

// Paged KV cache: K and V live in fixed-size blocks of kBlockTokens positions; each sequence has a
// block table (logical block i -> physical block). Blocks are reference counted, so forks (n > 1
// samples, beams) share them and a shared block is copied before it is written (copy-on-write).
// Full blocks are hashed by the token ids of the whole prefix up to and including them, so a new
// prompt with a cached prefix reuses those blocks instead of recomputing them (prefix caching);
// freed hashed blocks stay findable until the allocator needs them (least recently freed first).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <unordered_map>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/tensor.h"

namespace kiln {

constexpr int kBlockTokens = 16;

struct KvCacheShape {
  int layers = 0;         // L
  int kv_dim = 0;         // K*D floats per position per layer, for K and for V
  int num_blocks = 0;     // physical blocks in the pool
  bool host_pool = true;  // false: K/V live elsewhere (a GPU forward pass); only bookkeeping here
};

class KvCache {
 public:
  using SeqId = int;
  explicit KvCache(const KvCacheShape& shape);

  // A new, empty sequence. Its blocks are shared (prefix caching) only with sequences of the same
  // salt: K/V depend on the weights, so a LoRA adapter's sequences use the adapter's salt.
  SeqId create(uint64_t salt = 0);
  // Attaches cached full blocks matching a prefix of `prompt` to an empty sequence and returns
  // how many tokens they hold (a multiple of kBlockTokens, at most `max_tokens`).
  int attach_prefix(SeqId s, const std::vector<int32_t>& prompt, int max_tokens);
  // A new sequence sharing every block of `s` (reference counts + 1): O(blocks), no copy.
  SeqId fork(SeqId s);
  // Drops the sequence; blocks whose count reaches 0 return to the free lists.
  void release(SeqId s);

  // Makes positions len..len+n-1 writable: allocates blocks and copies a shared last block
  // (copy-on-write: in the host pool, and through the copy hook). Throws Error when the pool is
  // exhausted.
  void prepare_append(SeqId s, int n);
  // Blocks prepare_append(s, n) would take from the pool now (new blocks + a copy-on-write).
  int blocks_to_append(SeqId s, int n) const;
  // Records that `tokens` now fill positions len.. (their K/V written); hashes blocks that became
  // full so later prompts can share them.
  void commit(SeqId s, const int32_t* tokens, int n);

  int length(SeqId s) const { return seqs_[s].len; }
  const std::vector<int>& block_table(SeqId s) const { return seqs_[s].blocks; }
  // K (resp. V) of `layer` in a physical block: (kBlockTokens, kv_dim).
  float* k(int block, int layer) { return base(block, layer); }
  float* v(int block, int layer) { return base(block, layer) + kBlockTokens * shape_.kv_dim; }
  const float* k(int block, int layer) const { return const_cast<KvCache*>(this)->k(block, layer); }
  const float* v(int block, int layer) const { return const_cast<KvCache*>(this)->v(block, layer); }
  // Where position `pos` of sequence `s` lives (after prepare_append).
  std::pair<int, int> slot(SeqId s, int pos) const {
    return {seqs_[s].blocks[pos / kBlockTokens], pos % kBlockTokens};
  }

  // Called with (src, dst) physical blocks on every copy-on-write, for K/V kept outside the host
  // pool (the GPU's copy of its layout).
  void set_copy_hook(std::function<void(int src, int dst)> hook) { copy_hook_ = std::move(hook); }

  int num_blocks() const { return shape_.num_blocks; }
  // Blocks not referenced by any sequence (some may still hold reusable cached prefixes).
  int free_blocks() const { return free_count_; }
  int ref_count(int block) const { return blocks_[block].refs; }
  const KvCacheShape& shape() const { return shape_; }
  // Counters for tests and stats.
  int64_t prefix_hit_tokens() const { return prefix_hits_; }
  int64_t cow_copies() const { return cow_copies_; }

 private:
  struct Block {
    int refs = 0;
    bool hashed = false, in_free = false;
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the block's own tokens, checked on a hash hit
    uint64_t parent = 0;          // hash of the prefix before it
  };
  struct Seq {
    bool live = false;
    int len = 0;
    std::vector<int> blocks;
    std::vector<int32_t> tail;  // tokens of the last, partial block
    uint64_t hash = 0;          // hash of the full blocks so far
  };
  float* base(int block, int layer) {
    KILN_DCHECK(shape_.host_pool);
    return pool_.f32() +
           (int64_t(block) * shape_.layers + layer) * 2 * kBlockTokens * shape_.kv_dim;
  }
  int allocate();
  void unref(int block);
  int find_cached(uint64_t parent, const int32_t* tokens) const;

  KvCacheShape shape_;
  Tensor pool_;  // (num_blocks, L, 2, kBlockTokens, kv_dim)
  std::vector<Block> blocks_;
  std::vector<Seq> seqs_;
  std::vector<SeqId> free_seqs_;
  std::vector<int> free_plain_;  // never hashed: reused first
  std::deque<int> free_cached_;  // hashed, oldest first; stale entries skipped lazily
  std::unordered_multimap<uint64_t, int> by_hash_;
  std::function<void(int, int)> copy_hook_;
  int free_count_ = 0;
  int64_t prefix_hits_ = 0, cow_copies_ = 0;
};

}  // namespace kiln

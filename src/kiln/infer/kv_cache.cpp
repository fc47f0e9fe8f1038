#include "kiln/infer/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "kiln/core/error.h"

namespace kiln {
namespace {

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 29);
}

uint64_t block_hash(uint64_t parent, const int32_t* tokens) {
  uint64_t h = mix(parent, 0x6b696c6eull);
  for (int i = 0; i < kBlockTokens; ++i) h = mix(h, uint32_t(tokens[i]));
  return h;
}

}  // namespace

KvCache::KvCache(const KvCacheShape& shape) : shape_(shape) {
  KILN_CHECK(shape.layers > 0 && shape.kv_dim > 0 && shape.num_blocks > 0, "kv_cache",
             "layers, kv_dim and num_blocks must be positive, got ", shape.layers, ", ",
             shape.kv_dim, ", ", shape.num_blocks);
  if (shape.host_pool)
    pool_ = Tensor::empty(
        {int64_t(shape.num_blocks) * shape.layers * 2 * kBlockTokens * int64_t(shape.kv_dim)});
  blocks_.resize(shape.num_blocks);
  for (int b = shape.num_blocks - 1; b >= 0; --b) {
    free_plain_.push_back(b);
    blocks_[b].in_free = true;
  }
  free_count_ = shape.num_blocks;
}

KvCache::SeqId KvCache::create(uint64_t salt) {
  SeqId s;
  if (!free_seqs_.empty()) {
    s = free_seqs_.back();
    free_seqs_.pop_back();
  } else {
    s = SeqId(seqs_.size());
    seqs_.emplace_back();
  }
  seqs_[s] = Seq{};
  seqs_[s].hash = salt;  // the hash chain of its full blocks starts from the salt
  seqs_[s].live = true;
  return s;
}

int KvCache::allocate() {
  int b = -1;
  while (!free_plain_.empty() && b < 0) {
    int c = free_plain_.back();
    free_plain_.pop_back();
    if (blocks_[c].in_free && !blocks_[c].hashed) b = c;
  }
  while (!free_cached_.empty() && b < 0) {
    int c = free_cached_.front();
    free_cached_.pop_front();
    if (blocks_[c].in_free && blocks_[c].refs == 0) b = c;
  }
  KILN_CHECK(b >= 0, "kv_cache", "out of KV blocks (", shape_.num_blocks, " blocks of ",
             kBlockTokens, " tokens): lower the batch or raise the cache size");
  Block& blk = blocks_[b];
  if (blk.hashed) {  // evict the cached prefix it held
    auto range = by_hash_.equal_range(blk.hash);
    for (auto it = range.first; it != range.second; ++it)
      if (it->second == b) {
        by_hash_.erase(it);
        break;
      }
    blk.hashed = false;
    blk.tokens.clear();
  }
  blk.in_free = false;
  blk.refs = 1;
  --free_count_;
  return b;
}

void KvCache::unref(int b) {
  Block& blk = blocks_[b];
  KILN_DCHECK(blk.refs > 0);
  if (--blk.refs > 0) return;
  blk.in_free = true;
  ++free_count_;
  if (blk.hashed) {
    free_cached_.push_back(b);
    if (free_cached_.size() > size_t(4) * blocks_.size()) {  // drop stale and duplicate entries
      std::vector<char> seen(blocks_.size(), 0);
      std::deque<int> live;
      for (int c : free_cached_)
        if (blocks_[c].in_free && blocks_[c].hashed && !seen[c]) live.push_back(c), seen[c] = 1;
      free_cached_.swap(live);
    }
  } else {
    free_plain_.push_back(b);
  }
}

int KvCache::find_cached(uint64_t parent, const int32_t* tokens) const {
  auto range = by_hash_.equal_range(block_hash(parent, tokens));
  for (auto it = range.first; it != range.second; ++it) {
    const Block& blk = blocks_[it->second];
    if (blk.parent == parent && std::equal(blk.tokens.begin(), blk.tokens.end(), tokens))
      return it->second;
  }
  return -1;
}

int KvCache::attach_prefix(SeqId s, const std::vector<int32_t>& prompt, int max_tokens) {
  Seq& q = seqs_[s];
  KILN_DCHECK(q.live && q.len == 0);
  int n = 0;
  while (n + kBlockTokens <= std::min<int>(max_tokens, int(prompt.size()))) {
    int b = find_cached(q.hash, prompt.data() + n);
    if (b < 0) break;
    Block& blk = blocks_[b];
    if (blk.refs++ == 0) {  // revived from the free list (its stale entry is skipped later)
      blk.in_free = false;
      --free_count_;
    }
    q.blocks.push_back(b);
    q.hash = blk.hash;
    n += kBlockTokens;
  }
  q.len = n;
  prefix_hits_ += n;
  return n;
}

KvCache::SeqId KvCache::fork(SeqId s) {
  SeqId c = create();
  Seq& src = seqs_[s];  // after create(): seqs_ may have grown
  for (int b : src.blocks) ++blocks_[b].refs;
  Seq& dst = seqs_[c];
  dst.len = src.len;
  dst.blocks = src.blocks;
  dst.tail = src.tail;
  dst.hash = src.hash;
  return c;
}

void KvCache::release(SeqId s) {
  Seq& q = seqs_[s];
  KILN_DCHECK(q.live);
  for (int b : q.blocks) unref(b);
  q = Seq{};
  free_seqs_.push_back(s);
}

void KvCache::prepare_append(SeqId s, int n) {
  Seq& q = seqs_[s];
  // Copy-on-write: the partial last block is shared when a fork happened mid-block.
  if (q.len % kBlockTokens != 0) {
    int& last = q.blocks.back();
    if (blocks_[last].refs > 1) {
      int fresh = allocate();
      const size_t bytes = size_t(shape_.layers) * 2 * kBlockTokens * shape_.kv_dim * sizeof(float);
      if (shape_.host_pool) std::memcpy(base(fresh, 0), base(last, 0), bytes);
      if (copy_hook_) copy_hook_(last, fresh);
      unref(last);
      last = fresh;
      ++cow_copies_;
    }
  }
  const int need = (q.len + n + kBlockTokens - 1) / kBlockTokens;
  while (int(q.blocks.size()) < need) q.blocks.push_back(allocate());
}

int KvCache::blocks_to_append(SeqId s, int n) const {
  const Seq& q = seqs_[s];
  const bool cow = q.len % kBlockTokens != 0 && blocks_[q.blocks.back()].refs > 1;
  const int need = (q.len + n + kBlockTokens - 1) / kBlockTokens;
  return int(cow) + std::max(0, need - int(q.blocks.size()));
}

void KvCache::commit(SeqId s, const int32_t* tokens, int n) {
  Seq& q = seqs_[s];
  for (int i = 0; i < n; ++i) {
    q.tail.push_back(tokens[i]);
    ++q.len;
    if (q.len % kBlockTokens == 0) {
      const int b = q.blocks[q.len / kBlockTokens - 1];
      Block& blk = blocks_[b];
      const uint64_t h = block_hash(q.hash, q.tail.data());
      if (!blk.hashed && find_cached(q.hash, q.tail.data()) < 0) {
        blk.hashed = true;
        blk.hash = h;
        blk.parent = q.hash;
        blk.tokens = q.tail;
        by_hash_.emplace(h, b);
      }
      q.hash = h;
      q.tail.clear();
    }
  }
}

}  // namespace kiln

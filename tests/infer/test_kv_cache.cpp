// The paged cache's bookkeeping: blocks are allocated as positions grow, forks share blocks and
// copy a shared partial block before writing it, full blocks are found again by their prefix
// hash (also after their sequence is gone), and every block returns to the pool.
#include "kiln/infer/kv_cache.h"

#include <gtest/gtest.h>

#include <numeric>

#include "kiln/core/error.h"

namespace kiln {
namespace {

std::vector<int32_t> iota_tokens(int n, int start = 0) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), start);
  return t;
}

void append(KvCache& c, KvCache::SeqId s, const std::vector<int32_t>& toks, float tag) {
  c.prepare_append(s, int(toks.size()));
  for (size_t i = 0; i < toks.size(); ++i) {
    auto [b, off] = c.slot(s, c.length(s) + int(i));
    for (int l = 0; l < c.shape().layers; ++l) c.k(b, l)[off * c.shape().kv_dim] = tag + float(i);
  }
  c.commit(s, toks.data(), int(toks.size()));
}

TEST(KvCache, AllocatesForksCopiesOnWriteAndFrees) {
  KvCache c({2, 4, 8});
  auto a = c.create();
  append(c, a, iota_tokens(20), 100);  // 2 blocks, the second partial
  EXPECT_EQ(c.block_table(a).size(), 2u);
  EXPECT_EQ(c.free_blocks(), 6);
  auto b = c.fork(a);
  EXPECT_EQ(c.block_table(b), c.block_table(a));
  EXPECT_EQ(c.ref_count(c.block_table(a)[1]), 2);
  EXPECT_EQ(c.free_blocks(), 6);  // nothing copied yet
  append(c, b, {7}, 500);         // writes position 20 in the shared partial block: copy
  EXPECT_EQ(c.cow_copies(), 1);
  EXPECT_NE(c.block_table(b)[1], c.block_table(a)[1]);
  EXPECT_EQ(c.block_table(b)[0], c.block_table(a)[0]);  // the full block stays shared
  // The copy kept a's values at positions 16..19 and b's write did not touch a.
  auto [ba, oa] = c.slot(a, 19);
  auto [bb, ob] = c.slot(b, 19);
  EXPECT_EQ(c.k(ba, 1)[oa * 4], c.k(bb, 1)[ob * 4]);
  auto [bb20, ob20] = c.slot(b, 20);
  EXPECT_EQ(c.k(bb20, 0)[ob20 * 4], 500.0f);
  append(c, a, {9}, 900);  // a's block is now exclusively its own: no copy
  EXPECT_EQ(c.cow_copies(), 1);
  c.release(a);
  c.release(b);
  EXPECT_EQ(c.free_blocks(), 8);
}

TEST(KvCache, PrefixBlocksAreSharedByHash) {
  KvCache c({1, 2, 16});
  auto a = c.create();
  std::vector<int32_t> prompt = iota_tokens(40);
  append(c, a, prompt, 0);
  auto b = c.create();
  EXPECT_EQ(c.attach_prefix(b, prompt, 39), 32);  // two full blocks
  EXPECT_EQ(c.block_table(b)[0], c.block_table(a)[0]);
  EXPECT_EQ(c.block_table(b)[1], c.block_table(a)[1]);
  EXPECT_EQ(c.ref_count(c.block_table(a)[0]), 2);
  // A prompt that differs in the second block shares only the first.
  auto d = c.create();
  std::vector<int32_t> other = prompt;
  other[20] = 999;
  EXPECT_EQ(c.attach_prefix(d, other, 39), 16);
  // Same tokens at a different prefix do not match: the hash covers the whole prefix.
  auto e = c.create();
  std::vector<int32_t> shifted(prompt.begin() + 16, prompt.end());
  EXPECT_EQ(c.attach_prefix(e, shifted, 20), 0);
  // After every user is gone the blocks stay findable until the pool needs them.
  for (auto s : {a, b, d, e}) c.release(s);
  EXPECT_EQ(c.free_blocks(), 16);
  auto f = c.create();
  EXPECT_EQ(c.attach_prefix(f, prompt, 39), 32);
  EXPECT_EQ(c.free_blocks(), 14);
  // max_tokens caps the match.
  auto g = c.create();
  EXPECT_EQ(c.attach_prefix(g, prompt, 31), 16);
  c.release(f);
  c.release(g);
  // Exhausting the pool evicts cached blocks (plain blocks first), then fails clearly.
  auto h = c.create();
  c.prepare_append(h, 16 * 16);
  EXPECT_EQ(c.free_blocks(), 0);
  auto i = c.create();
  EXPECT_EQ(c.attach_prefix(i, prompt, 39), 0);  // evicted
  EXPECT_THROW(c.prepare_append(i, 1), Error);
}

}  // namespace
}  // namespace kiln

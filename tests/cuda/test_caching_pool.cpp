// The caching allocator's bookkeeping, over a counting host allocator (runs without a GPU).
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {
namespace {

struct Host {
  int allocs = 0, frees = 0;
  size_t limit = SIZE_MAX, live = 0;
  std::map<void*, size_t> ptrs;
};
void* host_alloc(size_t n, void* ctx) {
  auto& h = *static_cast<Host*>(ctx);
  if (h.live + n > h.limit) return nullptr;
  h.allocs++, h.live += n;
  void* p = std::malloc(n);
  h.ptrs[p] = n;
  return p;
}
void host_free(void* p, void* ctx) {
  auto& h = *static_cast<Host*>(ctx);
  h.frees++;
  h.live -= h.ptrs.at(p);
  h.ptrs.erase(p);
  std::free(p);
}

TEST(CachingPool, RoundsSmallAndLarge) {
  EXPECT_EQ(CachingPool::round_size(0), 512u);
  EXPECT_EQ(CachingPool::round_size(1), 512u);
  EXPECT_EQ(CachingPool::round_size(513), 1024u);
  EXPECT_EQ(CachingPool::round_size(1u << 20), 2u << 20);
  EXPECT_EQ(CachingPool::round_size((2u << 20) + 1), 4u << 20);
}

TEST(CachingPool, ReusesFreedBlocksOnTheSameStreamOnly) {
  Host h;
  CachingPool pool(host_alloc, host_free, &h);
  void* a = pool.allocate(1000, 1, "t");
  pool.release(a);
  EXPECT_EQ(pool.allocate(900, 1, "t"), a);  // same rounded size, same stream: reused
  EXPECT_EQ(h.allocs, 1);
  void* b = pool.allocate(1000, 2, "t");  // another stream: a fresh block
  EXPECT_NE(b, a);
  EXPECT_EQ(h.allocs, 2);
  auto s = pool.stats();
  EXPECT_EQ(s.in_use, 2048u);
  EXPECT_EQ(s.reserved, 2048u);
  pool.release(a), pool.release(b);
  EXPECT_EQ(pool.stats().in_use, 0u);
  EXPECT_EQ(pool.stats().peak_in_use, 2048u);
  pool.empty_cache();
  EXPECT_EQ(h.frees, 2);
  EXPECT_EQ(pool.stats().reserved, 0u);
}

TEST(CachingPool, SmallRequestsDoNotTakeBigBlocks) {
  Host h;
  CachingPool pool(host_alloc, host_free, &h);
  void* big = pool.allocate(4u << 20, 0, "t");
  pool.release(big);
  void* small = pool.allocate(512, 0, "t");
  EXPECT_NE(small, big);
  void* near = pool.allocate((4u << 20) - 100, 0, "t");  // rounds to the same 4 MiB: reused
  EXPECT_EQ(near, big);
  pool.release(small), pool.release(near);
}

TEST(CachingPool, FreesTheCacheWhenOutOfMemoryThenRetries) {
  Host h;
  h.limit = 3u << 20;
  CachingPool pool(host_alloc, host_free, &h);
  void* a = pool.allocate(2u << 20, 1, "t");
  pool.release(a);                            // cached, still held from the raw allocator
  void* b = pool.allocate(2u << 20, 2, "t");  // other stream: needs the cached block given back
  EXPECT_EQ(h.frees, 1);
  pool.release(b);
}

TEST(CachingPool, OutOfMemoryNamesTheOpAndTheRequest) {
  Host h;
  h.limit = 1024;
  CachingPool pool(host_alloc, host_free, &h);
  try {
    pool.allocate(4096, 0, "attention_forward");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("attention_forward"), std::string::npos) << m;
    EXPECT_NE(m.find("4096"), std::string::npos) << m;
  }
  EXPECT_THROW(pool.release(reinterpret_cast<void*>(0x1234)), Error);
}

}  // namespace
}  // namespace kiln::cuda

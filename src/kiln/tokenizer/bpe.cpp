#include "kiln/tokenizer/bpe.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>

#include "kiln/core/error.h"
#include "kiln/tokenizer/work.h"

namespace kiln::tok {

namespace {
std::atomic<uint32_t> g_next_owner{1};  // see Bpe::cache_owner_
}  // namespace

EncodeWork& encode_work() {
  thread_local EncodeWork work;
  return work;
}

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 32);
}

static uint64_t hash_pair(uint64_t key) {
  key *= 0x9E3779B97F4A7C15ull;
  return key ^ (key >> 29);
}

namespace {
uint64_t head_word(std::string_view s) {
  uint64_t w = 0;
  std::memcpy(&w, s.data(), std::min<size_t>(s.size(), 8));
  return w;
}
uint32_t tag_of(uint64_t h, size_t len) {
  return uint32_t(h >> 40) << 8 | uint32_t(std::min<size_t>(len, 255));
}
}  // namespace

void BytesMap::build(const std::vector<std::string>& tokens) {
  size_t cap = 16;
  while (cap < tokens.size() * 2) cap *= 2;
  slots_.assign(cap, Slot{0, -1, 0});
  mask_ = cap - 1;
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (tokens[id].empty() || find(tokens[id], tokens) >= 0) continue;  // first id wins
    uint64_t h = hash_bytes(tokens[id]);
    for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].id < 0) {
        slots_[i] = Slot{tag_of(h, tokens[id].size()), int32_t(id), head_word(tokens[id])};
        break;
      }
    }
  }
}

int32_t BytesMap::find(std::string_view s, const std::vector<std::string>& tokens) const {
  if (slots_.empty() || s.empty()) return -1;
  uint64_t h = hash_bytes(s);
  uint32_t tag = tag_of(h, s.size());
  uint64_t head = head_word(s);
  for (uint64_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& slot = slots_[i];
    if (slot.id < 0) return -1;
    if (slot.tag == tag && slot.head == head &&
        (s.size() <= 8 || std::string_view(tokens[size_t(slot.id)]).substr(8) == s.substr(8)))
      return slot.id;
  }
}

Bpe::Bpe(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  cache_owner_ = g_next_owner++;
  map_.build(tokens_);
  for (int b = 0; b < 256; ++b) {
    char c = char(b);
    byte_id_[b] = find(std::string_view(&c, 1));
  }
  pairs_.assign(1024, PairSlot{kEmpty, {}});
  pair_mask_ = pairs_.size() - 1;
}

void Bpe::grow() {
  std::vector<PairSlot> old(pairs_.size() * 2, PairSlot{kEmpty, {}});
  old.swap(pairs_);
  pair_mask_ = pairs_.size() - 1;
  for (const PairSlot& s : old)
    if (s.key != kEmpty) {
      for (uint64_t i = hash_pair(s.key) & pair_mask_;; i = (i + 1) & pair_mask_)
        if (pairs_[i].key == kEmpty) {
          pairs_[i] = s;
          break;
        }
    }
}

void Bpe::insert(uint64_t key, Merge m) {
  if ((num_merges_ + 1) * 2 > pairs_.size()) grow();
  for (uint64_t i = hash_pair(key) & pair_mask_;; i = (i + 1) & pair_mask_) {
    if (pairs_[i].key == key) {
      if (m.rank < pairs_[i].m.rank) pairs_[i].m = m;  // the earlier merge wins
      return;
    }
    if (pairs_[i].key == kEmpty) {
      pairs_[i] = PairSlot{key, m};
      ++num_merges_;
      return;
    }
  }
}

void Bpe::add_merge(int32_t left, int32_t right, int32_t merged, int32_t rank) {
  cache_owner_ = g_next_owner++;  // cached encodings are stale
  insert(uint64_t(uint32_t(left)) << 32 | uint32_t(right), Merge{rank, merged});
}

void Bpe::set_ignore_merges(bool on) {
  ignore_merges_ = on;
  cache_owner_ = g_next_owner++;
}

void Bpe::merges_from_ranks() {
  for (size_t id = 0; id < tokens_.size(); ++id) {
    std::string_view t = tokens_[id];
    for (size_t k = 1; k < t.size(); ++k) {
      int32_t l = find(t.substr(0, k)), r = find(t.substr(k));
      if (l >= 0 && r >= 0) add_merge(l, r, int32_t(id), int32_t(id));
    }
  }
}

Bpe::Merge Bpe::lookup(int32_t left, int32_t right) const {
  uint64_t key = uint64_t(uint32_t(left)) << 32 | uint32_t(right);
  for (uint64_t i = hash_pair(key) & pair_mask_;; i = (i + 1) & pair_mask_) {
    const PairSlot& s = pairs_[i];
    if (s.key == key) return s.m;
    if (s.key == kEmpty) return Merge{kNoRank, -1};
  }
}

std::vector<std::array<int32_t, 3>> Bpe::merges_by_rank() const {
  std::vector<std::pair<int32_t, std::array<int32_t, 3>>> all;
  for (const PairSlot& s : pairs_)
    if (s.key != kEmpty)
      all.push_back({s.m.rank, {int32_t(s.key >> 32), int32_t(s.key & 0xFFFFFFFF), s.m.merged}});
  std::sort(all.begin(), all.end());
  std::vector<std::array<int32_t, 3>> out;
  out.reserve(all.size());
  for (auto& [rank, m] : all) out.push_back(m);
  return out;
}

namespace {
// One cache line holds two entries: pieces up to 14 bytes whose encoding is at most 3 ids.
struct CacheEntry {
  uint32_t owner;  // Bpe::cache_owner_ (0: empty)
  uint8_t len, n;
  char key[14];
  int32_t ids[3];
};
static_assert(sizeof(CacheEntry) == 32, "two cache entries per cache line");
constexpr size_t kCacheEntries = 1 << 16;  // 2 MB per thread
}  // namespace

void Bpe::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() < 2 || piece.size() > sizeof(CacheEntry::key)) {
    encode_uncached(piece, out);
    return;
  }
  // The cache holds the key inline, so a hit costs one memory access; a vocabulary lookup of a
  // token longer than 8 bytes costs two.
  thread_local std::unique_ptr<CacheEntry[]> cache(new CacheEntry[kCacheEntries]());
  CacheEntry& e = cache[hash_bytes(piece) & (kCacheEntries - 1)];
  if (e.owner == cache_owner_ && e.len == piece.size() &&
      std::memcmp(e.key, piece.data(), piece.size()) == 0) {
    ++encode_work().bpe;
    if (e.n == 1) {
      out.push_back(e.ids[0]);
    } else {
      out.insert(out.end(), e.ids, e.ids + e.n);
    }
    return;
  }
  size_t before = out.size();
  encode_uncached(piece, out);
  size_t n = out.size() - before;
  if (n <= 3) {
    e.owner = cache_owner_;
    e.len = uint8_t(piece.size());
    e.n = uint8_t(n);
    std::memcpy(e.key, piece.data(), piece.size());
    std::memcpy(e.ids, out.data() + before, n * sizeof(int32_t));
  }
}

void Bpe::encode_uncached(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  if (piece.size() == 1 || ignore_merges_) {
    int32_t id = piece.size() == 1 ? byte_id_[uint8_t(piece[0])] : find(piece);
    ++encode_work().bpe;
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  encode_merges(piece, out);
}

void Bpe::encode_merges(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() <= kLongPiece) {
    encode_small(piece, out);
  } else {
    encode_long(piece, out);
  }
}

static int32_t checked_byte(const std::array<int32_t, 256>& byte_id, char c) {
  int32_t id = byte_id[uint8_t(c)];
  if (id < 0)
    fail("bpe", "byte 0x", std::hex, int(uint8_t(c)),
         " has no single-byte token in this vocabulary: the vocabulary is not byte-level");
  return id;
}

void Bpe::encode_small(std::string_view piece, std::vector<int32_t>& out) const {
  // tiktoken's loop: parts and the rank of each adjacent pair; merge the minimum, update the two
  // neighbouring ranks. n <= kLongPiece, so the O(n) scans are cheap.
  int32_t parts[kLongPiece];
  int32_t ranks[kLongPiece];
  int32_t merged[kLongPiece];
  int n = int(piece.size());
  uint64_t work = uint64_t(n);
  for (int i = 0; i < n; ++i) parts[i] = checked_byte(byte_id_, piece[i]);
  for (int i = 0; i + 1 < n; ++i) {
    Merge m = lookup(parts[i], parts[i + 1]);
    ranks[i] = m.rank;
    merged[i] = m.merged;
  }
  while (n > 1) {
    work += uint64_t(n) + 2;  // the scan and the two lookups after a merge
    int best = 0;
    for (int i = 1; i + 1 < n; ++i)
      if (ranks[i] < ranks[best]) best = i;
    if (ranks[best] == kNoRank) break;
    parts[best] = merged[best];
    std::memmove(parts + best + 1, parts + best + 2, sizeof(int32_t) * size_t(n - best - 2));
    std::memmove(ranks + best + 1, ranks + best + 2,
                 sizeof(int32_t) * size_t(std::max(0, n - best - 3)));
    std::memmove(merged + best + 1, merged + best + 2,
                 sizeof(int32_t) * size_t(std::max(0, n - best - 3)));
    --n;
    if (best > 0) {
      Merge m = lookup(parts[best - 1], parts[best]);
      ranks[best - 1] = m.rank;
      merged[best - 1] = m.merged;
    }
    if (best + 1 < n) {
      Merge m = lookup(parts[best], parts[best + 1]);
      ranks[best] = m.rank;
      merged[best] = m.merged;
    }
  }
  out.insert(out.end(), parts, parts + n);
  encode_work().bpe += work;
}

namespace {
// Scratch for Bpe::encode_long, one per thread, so long pieces reuse their buffers.
struct LongScratch {
  struct Node {
    int32_t id, prev, next;  // the symbol and its neighbours in the list (-1: none)
    int32_t rank, merged;    // the pair (this, next): its merge, or kNoRank
  };
  // The candidate positions of one rank; [cursor, end) are not taken yet.
  struct Group {
    int32_t rank = 0;
    std::vector<int32_t> pos;
    size_t cursor = 0;
    bool sorted = true;  // [cursor, end) ascending
    bool in_heap = false;
  };
  static constexpr int32_t kFree = INT32_MIN;

  std::vector<Node> nodes;
  std::vector<Group> groups;  // [0, used) belong to this call
  size_t used = 0;
  std::vector<std::pair<int32_t, int32_t>> table;  // rank -> group, open addressing
  std::vector<uint64_t> heap;                      // (rank, group) with candidates left, min first

  static uint64_t key(int32_t rank, size_t g) {
    return uint64_t(uint32_t(rank) ^ 0x80000000u) << 32 | g;  // signed rank order
  }
  void reset() {
    for (size_t g = 0; g < used; ++g) {
      groups[g].pos.clear();
      groups[g].cursor = 0;
      groups[g].sorted = true;
      groups[g].in_heap = false;
    }
    used = 0;
    heap.clear();
    table.assign(64, {kFree, 0});
  }
  size_t group_of(int32_t rank) {
    if ((used + 1) * 2 > table.size()) {
      table.assign(table.size() * 2, {kFree, 0});
      for (size_t g = 0; g < used; ++g) slot(groups[g].rank) = {groups[g].rank, int32_t(g)};
    }
    auto& s = slot(rank);
    if (s.first == rank) return size_t(s.second);
    if (groups.size() == used) groups.emplace_back();
    groups[used].rank = rank;
    s = {rank, int32_t(used)};
    return used++;
  }
  std::pair<int32_t, int32_t>& slot(int32_t rank) {
    size_t mask = table.size() - 1;
    for (size_t i = hash_pair(uint32_t(rank)) & mask;; i = (i + 1) & mask)
      if (table[i].first == rank || table[i].first == kFree) return table[i];
  }
  void push(int32_t rank, int32_t p) {
    size_t gi = group_of(rank);
    Group& g = groups[gi];
    if (g.pos.size() > g.cursor && p < g.pos.back()) g.sorted = false;
    g.pos.push_back(p);
    if (!g.in_heap) {
      g.in_heap = true;
      heap.push_back(key(rank, gi));
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  }
  void pop_group() {
    Group& g = groups[heap.front() & 0xFFFFFFFF];
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    heap.pop_back();
    g.pos.clear();
    g.cursor = 0;
    g.sorted = true;
    g.in_heap = false;
  }
};
}  // namespace

void Bpe::encode_long(std::string_view piece, std::vector<int32_t>& out) const {
  // The same merge order as encode_small (lowest rank, then leftmost), from a linked list of
  // symbols and the candidate pairs grouped by rank: a group's positions are taken in ascending
  // order (sorted only when they arrived out of order, which is rare: merging left to right
  // queues new pairs left to right), and a min-heap holds one entry per rank, not per pair. A
  // taken candidate is stale unless its position still holds a pair of that rank.
  thread_local LongScratch s;
  using Node = LongScratch::Node;
  const int32_t n = int32_t(piece.size());
  uint64_t work = 0;
  std::vector<Node>& nodes = s.nodes;
  nodes.resize(size_t(n));
  for (int32_t i = 0; i < n; ++i)
    nodes[size_t(i)] = Node{checked_byte(byte_id_, piece[size_t(i)]), i - 1, i + 1, kNoRank, -1};
  nodes[size_t(n - 1)].next = -1;
  s.reset();
  auto set_pair = [&](int32_t i) {
    Node& a = nodes[size_t(i)];
    a.rank = kNoRank;
    if (a.next < 0) return;
    Merge m = lookup(a.id, nodes[size_t(a.next)].id);
    ++work;
    a.rank = m.rank;
    a.merged = m.merged;
    if (m.rank != kNoRank) {
      s.push(m.rank, i);
      ++work;
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) set_pair(i);
  while (!s.heap.empty()) {
    LongScratch::Group& g = s.groups[s.heap.front() & 0xFFFFFFFF];
    if (g.cursor == g.pos.size()) {
      s.pop_group();
      continue;
    }
    if (!g.sorted) {
      size_t m = g.pos.size() - g.cursor;
      std::sort(g.pos.begin() + std::ptrdiff_t(g.cursor), g.pos.end());
      work += m * std::bit_width(m);
      g.sorted = true;
    }
    int32_t p = g.pos[g.cursor++];
    ++work;
    Node& a = nodes[size_t(p)];
    if (a.rank != g.rank) continue;  // stale: merged away or its neighbour changed
    Node& b = nodes[size_t(a.next)];
    a.id = a.merged;
    a.next = b.next;
    if (a.next >= 0) nodes[size_t(a.next)].prev = p;
    b.id = -1;
    b.rank = kNoRank;
    if (a.prev >= 0) set_pair(a.prev);  // may grow s.groups: g is not used below
    set_pair(p);
  }
  for (int32_t i = 0; i >= 0; i = nodes[size_t(i)].next) out.push_back(nodes[size_t(i)].id);
  encode_work().bpe += work;
}

}  // namespace kiln::tok

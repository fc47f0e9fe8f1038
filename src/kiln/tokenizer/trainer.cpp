#include "kiln/tokenizer/trainer.h"

#include <algorithm>
#include <atomic>
#include <queue>
#include <unordered_map>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/io/file.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

namespace {

struct Word {
  std::vector<int32_t> syms;
  int64_t count;
};

uint64_t pair_key(int32_t a, int32_t b) {
  return uint64_t(uint32_t(a)) << 32 | uint32_t(b);
}

// Piece -> count over all documents: each thread counts its share, then the maps are summed.
// Returned sorted by piece so everything after is independent of the thread count.
std::vector<std::pair<std::string, int64_t>> count_pieces(const std::vector<std::string_view>& docs,
                                                          const tok::PreTokenizer& pre,
                                                          bool progress) {
  int parts = std::max(1, num_threads());
  std::vector<std::unordered_map<std::string, int64_t>> local(static_cast<size_t>(parts));
  int64_t total_bytes = 0;
  for (auto d : docs) total_bytes += int64_t(d.size());
  Progress prog("counting pieces", total_bytes, "B");
  std::atomic<int64_t> done{0};
  if (progress) prog.update(0);
  parallel_for(parts, [&](int64_t p) {
    std::vector<std::string_view> pieces;
    auto& counts = local[size_t(p)];
    for (size_t i = size_t(p); i < docs.size(); i += size_t(parts)) {
      pieces.clear();
      pre.split(docs[i], pieces);
      for (auto piece : pieces) ++counts[std::string(piece)];
      done += int64_t(docs[i].size());
      if (progress && p == 0) prog.update(done.load());
    }
  });
  for (size_t p = 1; p < local.size(); ++p)
    for (auto& [k, v] : local[p]) local[0][k] += v;
  if (progress) prog.finish(str(local[0].size(), " unique pieces"));
  std::vector<std::pair<std::string, int64_t>> out(local[0].begin(), local[0].end());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

Tokenizer train_bpe(const std::vector<std::string_view>& docs, const BpeTrainOptions& opts) {
  const int32_t n_merges = opts.vocab_size - 256 - int32_t(opts.specials.size());
  KILN_CHECK(n_merges >= 0, "bpe_train", "vocab_size ", opts.vocab_size,
             " is smaller than the 256 byte tokens plus ", opts.specials.size(),
             " specials: give at least ", 256 + opts.specials.size());
  KILN_CHECK(opts.pattern != Pattern::custom, "bpe_train",
             "train with a named pattern (gpt2, cl100k, o200k, llama3, none)");
  tok::PreTokenizer pre(opts.pattern);

  std::vector<Word> words;
  for (auto& [piece, count] : count_pieces(docs, pre, opts.progress)) {
    Word w{{}, count};
    for (unsigned char c : piece) w.syms.push_back(int32_t(c));
    if (w.syms.size() > 1) words.push_back(std::move(w));
  }

  // Pair counts, the words each pair occurs in (may hold stale entries), and a max-heap of
  // (count, pair) with lazy updates: a popped entry whose count is out of date is pushed again.
  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].syms;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t k = pair_key(s[i], s[i + 1]);
      counts[k] += words[w].count;
      auto& list = where[k];
      if (list.empty() || list.back() != int32_t(w)) list.push_back(int32_t(w));
    }
  }
  struct Entry {
    int64_t count;
    uint64_t pair;
    bool operator<(const Entry& o) const {  // larger count first, then smaller pair
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };
  std::priority_queue<Entry> heap;
  for (auto& [k, c] : counts) heap.push({c, k});

  std::vector<std::string> tokens(256);
  for (int b = 0; b < 256; ++b) tokens[size_t(b)] = std::string(1, char(b));
  std::vector<std::array<int32_t, 2>> merges;
  std::vector<int32_t> seen(words.size(), -1);  // last merge that touched each word
  Progress prog("bpe merges", n_merges, "merges");
  if (opts.progress) prog.update(0);
  while (int32_t(merges.size()) < n_merges && !heap.empty()) {
    Entry top = heap.top();
    heap.pop();
    auto it = counts.find(top.pair);
    int64_t now = it == counts.end() ? 0 : it->second;
    if (now != top.count) {
      if (now > 0) heap.push({now, top.pair});
      continue;
    }
    if (top.count < opts.min_frequency) break;
    auto a = int32_t(top.pair >> 32), b = int32_t(top.pair & 0xFFFFFFFF);
    auto id = int32_t(tokens.size());
    tokens.push_back(tokens[size_t(a)] + tokens[size_t(b)]);
    merges.push_back({a, b});
    const int32_t step = int32_t(merges.size());

    std::vector<uint64_t> touched;
    std::vector<int32_t> list = std::move(where[top.pair]);
    where.erase(top.pair);
    for (int32_t w : list) {
      if (seen[size_t(w)] == step) continue;
      seen[size_t(w)] = step;
      Word& word = words[size_t(w)];
      auto& s = word.syms;
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;  // stale entry
      // Remove the word's old pairs, merge left to right, add the new pairs.
      for (size_t i = 0; i + 1 < s.size(); ++i) counts[pair_key(s[i], s[i + 1])] -= word.count;
      size_t o = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          s[o++] = id;
          ++i;
        } else {
          s[o++] = s[i];
        }
      }
      s.resize(o);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        uint64_t k = pair_key(s[i], s[i + 1]);
        counts[k] += word.count;
        if (s[i] == id || s[i + 1] == id) {
          auto& wl = where[k];
          if (wl.empty() || wl.back() != w) wl.push_back(w);
          touched.push_back(k);
        }
      }
    }
    counts.erase(top.pair);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched)
      if (counts[k] > 0) heap.push({counts[k], k});
    if (opts.progress) prog.update(int64_t(merges.size()));
  }
  if (opts.progress) prog.finish(str(merges.size(), " merges"));

  Tokenizer::Impl impl;
  const size_t n_tokens = tokens.size();
  impl.bpe = tok::Bpe(std::move(tokens));
  for (size_t r = 0; r < merges.size(); ++r)
    impl.bpe.add_merge(merges[r][0], merges[r][1], int32_t(256 + r), int32_t(r));
  impl.bpe.set_ignore_merges(true);
  impl.pre = std::move(pre);
  for (size_t i = 0; i < opts.specials.size(); ++i)
    impl.added.push_back({opts.specials[i], int32_t(n_tokens + i), true});
  return make_tokenizer(std::move(impl));
}

Tokenizer train_bpe_files(const std::vector<std::string>& paths, const BpeTrainOptions& opts) {
  KILN_CHECK(!paths.empty(), "bpe_train", "no input files: give --input FILE...");
  std::vector<std::string> texts;
  for (const auto& p : paths) texts.push_back(read_file(p));
  std::vector<std::string_view> docs;
  for (const std::string& t : texts)
    for (auto d : split_at_lines(t, size_t(1) << 20)) docs.push_back(d);
  return train_bpe(docs, opts);
}

}  // namespace kiln

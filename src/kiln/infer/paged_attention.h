// Causal attention of query rows over a paged KV cache, reading the blocks in place: a tiled
// online softmax, one cache block (kBlockTokens positions) per tile. Contexts longer than
// kSplitTokens are cut into splits computed in parallel and merged by log-sum-exp in a fixed
// order, so a row's result depends only on its own sequence (not on the batch or thread count).
// Cost per row: 4 * (pos+1) * H * D FLOPs, reading (pos+1) * 2 * K * D floats per layer.
#pragma once

#include "kiln/infer/kv_cache.h"

namespace kiln {

constexpr int kSplitTokens = 256;  // a multiple of kBlockTokens

struct PagedRow {
  const int* blocks;  // the sequence's block table
  int pos;            // the query's position: attends to 0..pos (K/V already written there)
};

// out (N, H*D) from q heads at the start of each qkv row (N rows, `stride` floats apart).
// H query heads share K kv heads in groups of H/K; scores are scaled by 1/sqrt(D).
void paged_attention(float* out, const float* qkv, int stride, const KvCache& cache, int layer,
                     const PagedRow* rows, int N, int H, int K, int D);

}  // namespace kiln

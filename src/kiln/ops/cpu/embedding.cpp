// Embedding lookup and its scatter-add gradient. Memory-bound row copies.
#include "kiln/ops/embedding.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

void embedding_forward(float* out, const int* ids, const float* table, int N, int C,
                       bool accumulate) {
  parallel_ranges(N, std::max<int64_t>(1, 8192 / std::max(C, 1)), [=](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* row = table + int64_t(ids[n]) * C;
      float* o = out + n * C;
      if (accumulate) {
#pragma omp simd
        for (int c = 0; c < C; ++c) o[c] += row[c];
      } else {
        std::memcpy(o, row, sizeof(float) * C);
      }
    }
  });
}

void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int C) {
  // Repeated ids make a row-parallel scatter race. Instead each thread owns a block of columns
  // and walks all N tokens in order, so every dtable entry is summed in order of n, exactly as
  // the serial loop does, for any thread count.
  constexpr int kBlock = 16;  // one AVX-512 vector / cache line of floats
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  parallel_ranges(blocks, std::max<int64_t>(1, 4096 / std::max(N, 1)), [=](int64_t b, int64_t e) {
    const int64_t c0 = b * kBlock, c1 = std::min<int64_t>(C, e * kBlock);
    for (int64_t n = 0; n < N; ++n) {
      float* d = dtable + int64_t(ids[n]) * C;
      const float* g = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

void embedding_forward_shard(float* out, const int* ids, const float* table, int N, int C,
                             int begin, int V) {
  parallel_ranges(N, std::max<int64_t>(1, 8192 / std::max(C, 1)), [=](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const int64_t id = int64_t(ids[n]) - begin;
      float* o = out + n * C;
      if (id >= 0 && id < V) {
        std::memcpy(o, table + id * C, sizeof(float) * C);
      } else {
        std::memset(o, 0, sizeof(float) * C);
      }
    }
  });
}

void embedding_backward_shard(float* dtable, const float* dout, const int* ids, int N, int C,
                              int begin, int V) {
  // As embedding_backward: column blocks per thread, tokens in order of n (deterministic).
  constexpr int kBlock = 16;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
  parallel_ranges(blocks, std::max<int64_t>(1, 4096 / std::max(N, 1)), [=](int64_t b, int64_t e) {
    const int64_t c0 = b * kBlock, c1 = std::min<int64_t>(C, e * kBlock);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t id = int64_t(ids[n]) - begin;
      if (id < 0 || id >= V) continue;
      float* d = dtable + id * C;
      const float* g = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

}  // namespace kiln::ops::cpu

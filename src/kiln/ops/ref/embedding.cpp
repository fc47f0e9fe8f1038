// Reference embedding: a row copy per token, and its transpose, a row scatter-add.
#include "kiln/ops/embedding.h"

#include <cstdint>

namespace kiln::ops::ref {

void embedding_forward(float* out, const int* ids, const float* table, int N, int C,
                       bool accumulate) {
  for (int n = 0; n < N; ++n) {
    const float* row = table + int64_t(ids[n]) * C;
    float* o = out + int64_t(n) * C;
    for (int c = 0; c < C; ++c) o[c] = accumulate ? o[c] + row[c] : row[c];
  }
}

void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int C) {
  for (int n = 0; n < N; ++n) {
    float* d = dtable + int64_t(ids[n]) * C;
    const float* g = dout + int64_t(n) * C;
    for (int c = 0; c < C; ++c) d[c] += g[c];
  }
}

}  // namespace kiln::ops::ref

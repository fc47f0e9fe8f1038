// Token (and learned position) embedding lookup. Memory-bound: N*C floats read and written.
#pragma once

namespace kiln::ops {

namespace ref {
// out (N,C) = table[ids[n]] (V,C) rows; with accumulate, out += instead of =.
void embedding_forward(float* out, const int* ids, const float* table, int N, int C,
                       bool accumulate);
// dtable (V,C) += scatter of dout (N,C) rows by ids.
void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int C);
}  // namespace ref

namespace cpu {
void embedding_forward(float* out, const int* ids, const float* table, int N, int C,
                       bool accumulate);
// Deterministic: the sum for each table row is taken in order of n, whatever the thread count.
void embedding_backward(float* dtable, const float* dout, const int* ids, int N, int C);
// Vocabulary parallelism: table holds rows [begin, begin+V) of the vocabulary. Ids outside give
// zero rows (summing over the ranks gives the lookup) and add nothing to dtable.
void embedding_forward_shard(float* out, const int* ids, const float* table, int N, int C,
                             int begin, int V);
void embedding_backward_shard(float* dtable, const float* dout, const int* ids, int N, int C,
                              int begin, int V);
}  // namespace cpu

}  // namespace kiln::ops

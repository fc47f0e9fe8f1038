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
}  // namespace cpu

}  // namespace kiln::ops

// LayerNorm as GPT-2 uses it: y = (x - mean) / sqrt(var + eps) * w + b (biased variance).
#pragma once

namespace kiln::ops {

namespace ref {
// out (N,C); mean, rstd (N) saved for backward.
void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C, float eps);
// dx (N,C) += ...; dw, db (C) += ...
void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N, int C);
}  // namespace ref

namespace cpu {
// Backward's dw and db are summed over row chunks fixed by N, in order: the same bits for any
// thread count (bit-exact resume). Null dw and db (frozen weights) are skipped.
void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* w,
                        const float* b, int N, int C, float eps);
void layer_norm_backward(float* dx, float* dw, float* db, const float* dout, const float* x,
                         const float* w, const float* mean, const float* rstd, int N, int C);
}  // namespace cpu

}  // namespace kiln::ops

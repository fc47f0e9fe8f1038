// RMSNorm as Llama uses it: y = w * x / sqrt(mean(x^2) + eps), statistics in fp32.
#pragma once

namespace kiln::ops {

namespace ref {
// out (N,C); rstd (N) saved for backward.
void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                      float eps);
// dx (N,C) += ...; dw (C) += ...
void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int N, int C);
}  // namespace ref

namespace cpu {
// Backward's dw is summed over row chunks fixed by N, in order: the same bits for any thread
// count (bit-exact resume). A null dw (a frozen weight) is skipped.
void rms_norm_forward(float* out, float* rstd, const float* x, const float* w, int N, int C,
                      float eps);
void rms_norm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                       const float* rstd, int N, int C);
}  // namespace cpu

}  // namespace kiln::ops

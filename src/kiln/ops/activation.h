// Feed-forward activations: SwiGLU (Llama) and tanh-approximated GELU (GPT-2 "gelu_new").
#pragma once

#include <cstdint>

namespace kiln::ops {

namespace ref {
// gu (N,2F) holds gate in columns [0,F) and up in [F,2F) (one fused GEMM produces both).
// out (N,F) = silu(gate) * up.
void swiglu_forward(float* out, const float* gu, int N, int F);
// dgu (N,2F) = d/dgu (overwritten).
void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F);
// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), n elements.
void gelu_forward(float* out, const float* x, int64_t n);
// dx = dout * gelu'(x) (overwritten).
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);
}  // namespace ref

namespace cpu {
// exp is a vectorized polynomial (~1 ulp); sigmoid saturates to exactly 0 below -88.4.
void swiglu_forward(float* out, const float* gu, int N, int F);
void swiglu_backward(float* dgu, const float* dout, const float* gu, int N, int F);
void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* dout, const float* x, int64_t n);
}  // namespace cpu

}  // namespace kiln::ops

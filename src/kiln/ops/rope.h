// Rotary position embedding, Hugging Face's rotate-half convention: within each head of D dims,
// element i < D/2 pairs with i + D/2 and both rotate by angle pos * inv_freq[i].
#pragma once

namespace kiln::ops {

// How positions are stretched for long context (config.json "rope_scaling").
struct RopeScaling {
  enum class Kind { none, linear, dynamic_ntk, llama3 } kind = Kind::none;
  float factor = 1.0f;
  // llama3 only:
  float low_freq_factor = 1.0f, high_freq_factor = 4.0f;
  int original_max_position = 8192;
};

// inv_freq (D/2): theta^(-2i/D), adjusted by the scaling (HF's _compute_*_parameters).
void rope_inv_freq(float* inv_freq, int D, float theta, const RopeScaling& scaling, int seq_len);
// cos, sin (T, D/2) tables for positions 0..T-1.
void rope_table(float* cos, float* sin, const float* inv_freq, int T, int D);

namespace ref {
// Rotates, in place, `heads` heads of D dims at the start of each of N rows (rows `stride`
// floats apart), row n at position pos[n]. cos/sin are tables from rope_table.
void rope_forward(float* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
                  const float* sin);
// The inverse rotation applied to gradients, in place.
void rope_backward(float* dx, int N, int heads, int D, int stride, const int* pos, const float* cos,
                   const float* sin);
}  // namespace ref

namespace cpu {
void rope_forward(float* x, int N, int heads, int D, int stride, const int* pos, const float* cos,
                  const float* sin);
void rope_backward(float* dx, int N, int heads, int D, int stride, const int* pos, const float* cos,
                   const float* sin);
}  // namespace cpu

}  // namespace kiln::ops

// Small vector helpers the model and trainer need: residual adds, scaling, norms.
#pragma once

#include <cstdint>

namespace kiln::ops {

namespace ref {
void add(float* out, const float* a, const float* b, int64_t n);  // out = a + b
void scale(float* x, float s, int64_t n);                         // x *= s
double sum_squares(const float* x, int64_t n);                    // sum x^2 in double
}  // namespace ref

namespace cpu {
void add(float* out, const float* a, const float* b, int64_t n);
void scale(float* x, float s, int64_t n);
// Deterministic whatever the thread count: fixed-size chunks, their partials summed in order.
double sum_squares(const float* x, int64_t n);
}  // namespace cpu

}  // namespace kiln::ops

#include "kiln/infer/linear_weight.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/ops/cpu/vec16.h"
#include "kiln/ops/matmul.h"

namespace kiln {

namespace vec = ops::cpu::vec;

namespace {

constexpr int kSmallN = 32;  // up to this many rows: the register-tiled kernel below
constexpr int kTile = 4;     // 4 weight rows x 4 input rows of 16-lane accumulators

// One (output o, row n) dot product is always summed the same way: 16-lane partial sums over
// IN in order, a horizontal sum, then the scalar tail. So a row's result does not depend on N or
// on where it sits in a tile: decode is bitwise batch-invariant through this path.
template <int NO, int NB>
void tile(float* y, const float* x, const float* w, int IN, int OUT, int o0, int n0) {
  vec::v16 acc[NO][NB] = {};
  const int I16 = IN / vec::kL * vec::kL;
  for (int i = 0; i < I16; i += vec::kL) {
    vec::v16 wv[NO];
    for (int a = 0; a < NO; ++a) wv[a] = vec::load(w + size_t(o0 + a) * IN + i);
    for (int b = 0; b < NB; ++b) {
      const vec::v16 xv = vec::load(x + size_t(n0 + b) * IN + i);
      for (int a = 0; a < NO; ++a) acc[a][b] += wv[a] * xv;
    }
  }
  for (int a = 0; a < NO; ++a)
    for (int b = 0; b < NB; ++b) {
      float s = vec::hsum(acc[a][b]);
      const float* wr = w + size_t(o0 + a) * IN;
      const float* xr = x + size_t(n0 + b) * IN;
      for (int i = I16; i < IN; ++i) s += wr[i] * xr[i];
      y[size_t(n0 + b) * OUT + o0 + a] = s;
    }
}

template <int NO>
void tile_rows(float* y, const float* x, const float* w, int N, int IN, int OUT, int o0) {
  int n0 = 0;
  for (; n0 + kTile <= N; n0 += kTile) tile<NO, kTile>(y, x, w, IN, OUT, o0, n0);
  switch (N - n0) {
    case 3:
      tile<NO, 3>(y, x, w, IN, OUT, o0, n0);
      break;
    case 2:
      tile<NO, 2>(y, x, w, IN, OUT, o0, n0);
      break;
    case 1:
      tile<NO, 1>(y, x, w, IN, OUT, o0, n0);
      break;
    default:
      break;
  }
}

// y (N, OUT) = x (N, IN) @ W^T for small N: streams W once (the decode bottleneck), x stays in
// cache. Parallel over blocks of output rows.
void linear_small_n(float* y, const float* x, const float* w, int N, int IN, int OUT) {
  const int64_t tiles = (OUT + kTile - 1) / kTile;
  parallel_ranges(tiles, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int o0 = int(t) * kTile;
      switch (std::min(kTile, OUT - o0)) {
        case 4:
          tile_rows<4>(y, x, w, N, IN, OUT, o0);
          break;
        case 3:
          tile_rows<3>(y, x, w, N, IN, OUT, o0);
          break;
        case 2:
          tile_rows<2>(y, x, w, N, IN, OUT, o0);
          break;
        default:
          tile_rows<1>(y, x, w, N, IN, OUT, o0);
          break;
      }
    }
  });
}

// The same for W stored (IN, OUT): each output is summed over IN in order, 16 columns at a time
// for up to 32 rows, so again a row's result does not depend on N.
void linear_small_n_in_out(float* y, const float* x, const float* w, int N, int IN, int OUT) {
  constexpr int kCols = 64;
  const int64_t blocks = (OUT + kCols - 1) / kCols;
  parallel_ranges(blocks, 1, [&](int64_t b0, int64_t b1) {
    float acc[kSmallN][kCols];
    for (int64_t b = b0; b < b1; ++b) {
      const int o0 = int(b) * kCols, width = std::min(kCols, OUT - o0);
      for (int n = 0; n < N; ++n) std::fill(acc[n], acc[n] + width, 0.0f);
      for (int i = 0; i < IN; ++i) {
        const float* wr = w + size_t(i) * OUT + o0;
        for (int n = 0; n < N; ++n) {
          const float xi = x[size_t(n) * IN + i];
          for (int j = 0; j < width; ++j) acc[n][j] += xi * wr[j];
        }
      }
      for (int n = 0; n < N; ++n) std::copy(acc[n], acc[n] + width, y + size_t(n) * OUT + o0);
    }
  });
}

void add_bias(float* y, const float* bias, int N, int OUT) {
  if (!bias) return;
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OUT; ++o) y[size_t(n) * OUT + o] += bias[o];
}

}  // namespace

void linear(float* y, const float* x, const LinearWeight& w, int N) {
  if (w.q) {
    KILN_DCHECK(w.q->rows == w.out && w.q->cols == w.in);
    quant::cpu::matmul(y, x, *w.q, N);
    add_bias(y, w.bias, N, w.out);
    return;
  }
  KILN_CHECK(w.f32, "linear", "weight has neither fp32 data nor a quantized tensor");
  if (N <= kSmallN) {
    if (w.layout == ops::WeightLayout::out_in) {
      linear_small_n(y, x, w.f32, N, w.in, w.out);
    } else {
      linear_small_n_in_out(y, x, w.f32, N, w.in, w.out);
    }
    add_bias(y, w.bias, N, w.out);
    return;
  }
  ops::cpu::linear_forward(y, x, w.f32, w.bias, N, w.in, w.out, w.layout);
}

}  // namespace kiln

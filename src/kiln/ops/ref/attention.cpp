// Reference causal GQA attention: one query row at a time, its scores materialized, every dot
// product and sum accumulated in double (the oracle is the exact result to within the fp32
// rounding of its inputs and outputs).
#include "kiln/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::ops::ref {

namespace {
// Pointers into packed qkv (B,T,(H+2K)*D) and the (B,T,H*D) output layout.
struct Layout {
  int T, H, K, D;
  int64_t W() const { return int64_t(H + 2 * K) * D; }
  int64_t q(int b, int t, int h) const { return (int64_t(b) * T + t) * W() + int64_t(h) * D; }
  int64_t k(int b, int t, int g) const { return q(b, t, H + g); }
  int64_t v(int b, int t, int g) const { return q(b, t, H + K + g); }
  int64_t o(int b, int t, int h) const { return (int64_t(b) * T + t) * H * D + int64_t(h) * D; }
};

double dot(const float* a, const float* b, int D) {
  double s = 0.0;
  for (int d = 0; d < D; ++d) s += double(a[d]) * b[d];
  return s;
}
}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int H, int K, int D,
                       const int* pos) {
  KILN_CHECK(K > 0 && H % K == 0, "attention", "query heads H=", H,
             " must be a multiple of kv heads K=", K);
  check_attention_positions(pos, B, T);
  const Layout L{T, H, K, D};
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> s(T), acc(D);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int g = h / (H / K);
      for (int i = 0; i < T; ++i) {
        // Causal: query i sees keys j0..i, its own sequence.
        const int j0 = first_key(pos, b, T, i);
        double m = -INFINITY;
        for (int j = j0; j <= i; ++j) {
          s[j] = scale * dot(qkv + L.q(b, i, h), qkv + L.k(b, j, g), D);
          m = std::max(m, s[j]);
        }
        double l = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int j = j0; j <= i; ++j) {
          const double p = std::exp(s[j] - m);
          l += p;
          const float* v = qkv + L.v(b, j, g);
          for (int d = 0; d < D; ++d) acc[d] += p * v[d];
        }
        for (int d = 0; d < D; ++d) out[L.o(b, i, h) + d] = float(acc[d] / l);
        lse[(int64_t(b) * H + h) * T + i] = float(m + std::log(l));
      }
    }
}

// With P_ij = exp(S_ij - lse_i) and O_i = sum_j P_ij V_j:
//   dV_j += P_ij dO_i,  dP_ij = dO_i . V_j,  dS_ij = P_ij (dP_ij - D_i),  D_i = dO_i . O_i,
//   dQ_i = scale sum_j dS_ij K_j,  dK_j += scale dS_ij Q_i.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int H, int K, int D, const int* pos) {
  KILN_CHECK(K > 0 && H % K == 0, "attention", "query heads H=", H,
             " must be a multiple of kv heads K=", K);
  check_attention_positions(pos, B, T);
  const Layout L{T, H, K, D};
  const double scale = 1.0 / std::sqrt(double(D));
  // Accumulate in double, round once at the end.
  std::vector<double> g(int64_t(B) * T * L.W(), 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kv = h / (H / K);
      for (int i = 0; i < T; ++i) {
        const float* q = qkv + L.q(b, i, h);
        const float* dO = dout + L.o(b, i, h);
        const double Di = dot(dO, out + L.o(b, i, h), D);
        const double lse_i = lse[(int64_t(b) * H + h) * T + i];
        for (int j = first_key(pos, b, T, i); j <= i; ++j) {
          const float* k = qkv + L.k(b, j, kv);
          const float* v = qkv + L.v(b, j, kv);
          const double p = std::exp(scale * dot(q, k, D) - lse_i);
          const double ds = p * (dot(dO, v, D) - Di);
          for (int d = 0; d < D; ++d) {
            g[L.q(b, i, h) + d] += scale * ds * k[d];
            g[L.k(b, j, kv) + d] += scale * ds * q[d];
            g[L.v(b, j, kv) + d] += p * dO[d];
          }
        }
      }
    }
  for (size_t n = 0; n < g.size(); ++n) dqkv[n] = float(g[n]);
}

}  // namespace kiln::ops::ref

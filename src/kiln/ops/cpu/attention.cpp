// Causal GQA attention on the CPU, flash-style (Dao et al. 2022; FlashAttention-2 loop order for
// the backward): scores live only in registers, tile by tile, never as a T x T matrix.
//
// Napkin math, training shape B=8, T=256, H=8, K=4, D=32 (causal, so half the score matrix):
//   forward:  QK^T + PV = 2 * 2*B*H*(T*T/2)*D = 268 MFLOP, plus 2.1 M exps.
//   backward: QK^T, dO V^T, dS K, dS^T Q, P^T dO = 5 * 134 = 671 MFLOP, plus 2.1 M exps.
//   bytes: qkv 4 MB, out and dout 2 MB each, read about once (tiles are reused from L1/L2), so
//   both passes are compute bound. One SPR core peaks at 2 FMA x 16 lanes x 2 x ~3 GHz ~ 190
//   GFLOP/s -> 1.4 ms fwd, 3.5 ms bwd per core at peak. Broadcast loads (2 per cycle for zmm),
//   the exps, row max/sum and the causal diagonal hold this code to ~30-35% of that peak.
//
// Layout of the work: keys are the vector lanes (a 16-key tile is one 16-float vector) and
// queries are taken 4 rows at a time (kR): forward register tiles are 4 rows x 64 keys, backward
// 4 x 32, so each loaded key vector feeds 4 FMAs and each broadcast query element 2 or more.
// Scores are kept in base 2: s2 = q.k * scale * log2(e), p = 2^(s2 - m2).
#include "kiln/ops/attention.h"
#include "kiln/ops/cpu/vec16.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"

namespace kiln::ops {

void check_attention_positions(const int* pos, int B, int T) {
  if (!pos) return;
  for (int64_t b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      const int p = pos[b * T + t];
      KILN_CHECK(p == 0 || (t > 0 && p == pos[b * T + t - 1] + 1), "attention", "row ", b,
                 " token ", t, " has position ", p,
                 ": positions start at 0 and count up by one within each packed sequence");
    }
}

}  // namespace kiln::ops

namespace kiln::ops::cpu {

namespace {

using namespace vec;
constexpr int kR = 4;  // query rows per register block
constexpr v16 kIota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Per-thread scratch, grown on demand and reused across calls (the OpenMP threads persist).
float* scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Offsets into packed qkv (B,T,(H+2K)*D) and into out (B,T,H*D).
struct Layout {
  int T, H, K, D;
  int64_t W() const { return int64_t(H + 2 * K) * D; }
  int64_t q(int b, int t, int h) const { return (int64_t(b) * T + t) * W() + int64_t(h) * D; }
  int64_t k(int b, int t, int g) const { return q(b, t, H + g); }
  int64_t v(int b, int t, int g) const { return q(b, t, H + K + g); }
  int64_t o(int b, int t, int h) const { return (int64_t(b) * T + t) * H * D + int64_t(h) * D; }
};

void check_args(int B, int T, int H, int K, int D) {
  KILN_CHECK(B >= 0 && T >= 0 && D > 0, "attention", "bad shape B=", B, " T=", T, " D=", D);
  KILN_CHECK(K > 0 && H % K == 0, "attention", "query heads H=", H,
             " must be a multiple of kv heads K=", K);
}

// Copies n <= bk rows (keys or values) of one kv head, `stride` floats apart, into dst (D, bk),
// transposed so that dimension d of a 16-key tile is one vector. Rows past n are zero.
void load_transposed(float* dst, int bk, const float* src, int64_t stride, int n, int D) {
  if (n < bk) std::fill(dst, dst + int64_t(D) * bk, 0.0f);
  for (int j = 0; j < n; ++j)
    for (int d = 0; d < D; ++d) dst[d * bk + j] = src[j * stride + d];
}

// Copies n <= bk rows into dst (bk, Dp), each zero-padded to Dp floats, for products along d.
void load_rows(float* dst, int bk, int Dp, const float* src, int64_t stride, int n, int D) {
  if (n < bk || D < Dp) std::fill(dst, dst + int64_t(bk) * Dp, 0.0f);
  for (int j = 0; j < n; ++j) std::copy(src + j * stride, src + j * stride + D, dst + j * Dp);
}

// out[r][:] = out[r][:] * keep[r] + sum_{j<n} coef[r][j] * rows[j][:] for kR rows of Dp floats
// (keep null: 1). The P V and dS K products. With Dp a multiple of 32, two vectors of d per pass
// (8 accumulators, and each broadcast coefficient feeds two FMAs); otherwise even and odd keys
// accumulate separately, for the same 8 independent FMA chains.
void rows_axpy(float* out, const float* keep, const float* coef, int ldc, const float* rows, int n,
               int Dp) {
  if (Dp % (2 * kL) == 0) {
    for (int x = 0; x < Dp; x += 2 * kL) {
      v16 acc[2][kR];
      for (int r = 0; r < kR; ++r)
        for (int u = 0; u < 2; ++u)
          acc[u][r] = load(out + r * Dp + x + u * kL) * (keep ? keep[r] : 1.0f);
      for (int j = 0; j < n; ++j) {
        const v16 v0 = load(rows + j * Dp + x), v1 = load(rows + j * Dp + x + kL);
        for (int r = 0; r < kR; ++r) {
          const float cj = coef[r * ldc + j];
          acc[0][r] += cj * v0;
          acc[1][r] += cj * v1;
        }
      }
      for (int r = 0; r < kR; ++r)
        for (int u = 0; u < 2; ++u) store(out + r * Dp + x + u * kL, acc[u][r]);
    }
    return;
  }
  for (int x = 0; x < Dp; x += kL) {
    v16 acc[2][kR];
    for (int r = 0; r < kR; ++r)
      acc[0][r] = load(out + r * Dp + x) * (keep ? keep[r] : 1.0f), acc[1][r] = v16{};
    for (int j = 0; j < n; j += 2)  // n is a multiple of 16
      for (int e = 0; e < 2; ++e) {
        const v16 vj = load(rows + (j + e) * Dp + x);
        for (int r = 0; r < kR; ++r) acc[e][r] += coef[r * ldc + j + e] * vj;
      }
    for (int r = 0; r < kR; ++r) store(out + r * Dp + x, acc[0][r] + acc[1][r]);
  }
}

// ---- forward ----------------------------------------------------------------------------------

constexpr int kBq = 64;  // query rows per task
constexpr int kNV = 4;   // key vectors per key block
constexpr int kBk = kNV * kL;

struct FwdTile {
  const float* q[kR];  // the rows' queries (unscaled)
  float* o;            // (kR, Dp) running numerators
  float* m;            // (kR) running max of s2
  float* l;            // (kR) running sum of 2^(s2 - m)
  int row0;            // position of the first row
  float lo[kR];        // each row's first visible key (its sequence's start; 0 unpacked)
};

// One online-softmax step: kR query rows against NV*16 keys starting at j0.
template <int NV>
void fwd_step(const FwdTile& t, const float* kt, const float* vrows, int D, int Dp, float c, int j0,
              bool mask) {
  v16 s[kR][NV] = {};
  for (int d = 0; d < D; ++d) {
    v16 k[NV];
    for (int v = 0; v < NV; ++v) k[v] = load(kt + d * kBk + v * kL);
    for (int r = 0; r < kR; ++r) {
      const float qd = t.q[r][d];
      for (int v = 0; v < NV; ++v) s[r][v] += qd * k[v];
    }
  }
  alignas(64) float p[kR][NV * kL];
  float corr[kR];
  for (int r = 0; r < kR; ++r) {
    v16 mx = splat(-INFINITY);
    for (int v = 0; v < NV; ++v) {
      s[r][v] *= c;
      // Causal: key j0 + v*16 + lane is visible to row row0 + r when it is not after it, and
      // (packed rows) not before the start of the row's sequence.
      if (mask) {
        const v16 key = kIota + float(j0 + v * kL);
        s[r][v] = key > float(t.row0 + r) ? splat(-INFINITY) : s[r][v];
        s[r][v] = key < t.lo[r] ? splat(-INFINITY) : s[r][v];
      }
      mx = vmax(mx, s[r][v]);
    }
    const float m_new = std::max(t.m[r], hmax(mx));
    if (m_new == -INFINITY) {  // no key of this block (or before) is the row's: nothing changes
      corr[r] = 1.0f;
      for (int v = 0; v < NV; ++v) store(&p[r][v * kL], v16{});
      continue;
    }
    corr[r] = std::exp2(t.m[r] - m_new);  // 0 on the first block (m = -inf)
    v16 sum{};
    for (int v = 0; v < NV; ++v) {
      const v16 pv = exp2v(s[r][v] - m_new);
      sum += pv;
      store(&p[r][v * kL], pv);
    }
    t.l[r] = t.l[r] * corr[r] + hsum(sum);
    t.m[r] = m_new;
  }
  // o = o * corr + P V.
  rows_axpy(t.o, corr, &p[0][0], NV * kL, vrows, NV * kL, Dp);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int H, int K, int D,
                       const int* pos) {
  check_args(B, T, H, K, D);
  check_attention_positions(pos, B, T);
  auto first = [&](int b, int i) { return first_key(pos, b, T, i); };
  const Layout L{T, H, K, D};
  const int Dp = (D + kL - 1) / kL * kL;
  const int nqt = (T + kBq - 1) / kBq;
  const float c = float(1.0 / std::sqrt(double(D))) * kLog2e;
  const int G = H / K;  // query heads per kv head
  // Tasks (b, kv head, query tile), tile innermost so each thread's contiguous share mixes cheap
  // (early) and expensive (late) causal tiles. The G query heads of a kv head share each key
  // block, so it is transposed and copied once per group rather than once per head.
  parallel_for(int64_t(B) * K * nqt, [&](int64_t task) {
    const int qt = int(task % nqt), g = int(task / nqt % K), b = int(task / nqt / K);
    const int i0 = qt * kBq, i1 = std::min(T, i0 + kBq);
    const size_t acc = size_t(G) * kBq;  // accumulator rows: G heads x kBq queries
    float* kt = scratch(size_t(D) * kBk + size_t(kBk) * Dp + acc * (Dp + 2));
    float* vrows = kt + D * kBk;  // (kBk, Dp)
    float* o = vrows + kBk * Dp;  // (G, kBq, Dp) running numerators
    float* m = o + acc * Dp;      // (G, kBq) running max of s2
    float* l = m + acc;           // (G, kBq) running sum of 2^(s2 - m)
    std::fill(o, o + acc * Dp, 0.0f);
    std::fill(m, m + acc, -INFINITY);
    std::fill(l, l + acc, 0.0f);
    // Causal: this tile's last query (i1 - 1) needs keys up to i1 - 1 only; packed, its first
    // query none before its sequence's start.
    for (int j0 = first(b, i0) / kBk * kBk; j0 < i1; j0 += kBk) {
      const int nk = std::min(kBk, i1 - j0);
      load_transposed(kt, kBk, qkv + L.k(b, j0, g), L.W(), nk, D);
      load_rows(vrows, kBk, Dp, qkv + L.v(b, j0, g), L.W(), nk, D);
      for (int hg = 0; hg < G; ++hg)
        for (int r0 = i0; r0 < i1; r0 += kR) {
          const int last = r0 + kR - 1;            // rows past i1 read row i1-1 and are discarded
          if (last < j0) continue;                 // the whole block is in these rows' future
          if (first(b, r0) >= j0 + kBk) continue;  // ... or before their sequences
          FwdTile t;
          for (int r = 0; r < kR; ++r) {
            const int i = std::min(r0 + r, i1 - 1);
            t.q[r] = qkv + L.q(b, i, g * G + hg);
            t.lo[r] = float(first(b, i));
          }
          const size_t row = size_t(hg) * kBq + (r0 - i0);
          t.o = o + row * Dp;
          t.m = m + row;
          t.l = l + row;
          t.row0 = r0;
          const int nv = std::min(kNV, (last - j0) / kL + 1);  // key vectors not all in the future
          // Some key is after some row, or before some row's sequence.
          const bool mask = j0 + nv * kL - 1 > r0 || t.lo[kR - 1] > float(j0);
          switch (nv) {
            case 1:
              fwd_step<1>(t, kt, vrows, D, Dp, c, j0, mask);
              break;
            case 2:
              fwd_step<2>(t, kt, vrows, D, Dp, c, j0, mask);
              break;
            case 3:
              fwd_step<3>(t, kt, vrows, D, Dp, c, j0, mask);
              break;
            default:
              fwd_step<4>(t, kt, vrows, D, Dp, c, j0, mask);
              break;
          }
        }
    }
    for (int hg = 0; hg < G; ++hg) {
      const int h = g * G + hg;
      for (int i = i0; i < i1; ++i) {
        const size_t row = size_t(hg) * kBq + (i - i0);
        const float inv = 1.0f / l[row];
        float* dst = out + L.o(b, i, h);
        for (int d = 0; d < D; ++d) dst[d] = o[row * Dp + d] * inv;
        lse[(int64_t(b) * H + h) * T + i] = (m[row] + std::log2(l[row])) * kLn2;
      }
    }
  });
}

// ---- backward ---------------------------------------------------------------------------------

namespace {

struct BwdRows {
  const float* q[kR];   // queries
  const float* dO[kR];  // output gradients
  float lse2[kR];       // lse in base 2
  float Di[kR];         // dO . O
  float bound[kR];      // last visible key (-1: padding row, sees nothing)
  float lo[kR];         // first visible key (its sequence's start; 0 unpacked)
  float* dq;            // (kR, Dp) dQ accumulators (unscaled)
};

constexpr int kNVb = 2;  // key vectors per backward tile
constexpr int kBb = kNVb * kL;

// kR query rows against the first NV*16 keys of the tile at j0: recompute P, then accumulate
// dV^T, dK^T (both (D, kBb), keys in lanes) and dQ. kt/vt are the tile's keys/values transposed
// (D, kBb), krows its keys by row (kBb, Dp). A 4 x 32 register tile: each loaded key vector and
// each broadcast query element feeds two FMAs or more.
template <int NV>
void bwd_step(const BwdRows& t, const float* kt, const float* vt, const float* krows, float* dkt,
              float* dvt, int D, int Dp, float c, int j0, bool mask) {
  v16 s[kR][NV] = {}, dp[kR][NV] = {};
  for (int d = 0; d < D; ++d) {
    v16 kd[NV], vd[NV];
    for (int v = 0; v < NV; ++v)
      kd[v] = load(kt + d * kBb + v * kL), vd[v] = load(vt + d * kBb + v * kL);
    for (int r = 0; r < kR; ++r) {
      const float q = t.q[r][d], o = t.dO[r][d];
      for (int v = 0; v < NV; ++v) {
        s[r][v] += q * kd[v];
        dp[r][v] += o * vd[v];
      }
    }
  }
  v16 p[kR][NV], ds[kR][NV];
  alignas(64) float dsb[kR][NV * kL];
  for (int r = 0; r < kR; ++r)
    for (int v = 0; v < NV; ++v) {
      p[r][v] = exp2v(s[r][v] * c - t.lse2[r]);
      if (mask) {
        const v16 key = kIota + float(j0 + v * kL);
        p[r][v] = key > t.bound[r] ? v16{} : p[r][v];
        p[r][v] = key < t.lo[r] ? v16{} : p[r][v];
      }
      ds[r][v] = p[r][v] * (dp[r][v] - t.Di[r]);
      store(&dsb[r][v * kL], ds[r][v]);
    }
  for (int d = 0; d < D; ++d) {
    v16 dv[NV], dk[NV];
    for (int v = 0; v < NV; ++v)
      dv[v] = load(dvt + d * kBb + v * kL), dk[v] = load(dkt + d * kBb + v * kL);
    for (int r = 0; r < kR; ++r) {
      const float q = t.q[r][d], o = t.dO[r][d];
      for (int v = 0; v < NV; ++v) {
        dv[v] += o * p[r][v];
        dk[v] += q * ds[r][v];
      }
    }
    for (int v = 0; v < NV; ++v)
      store(dvt + d * kBb + v * kL, dv[v]), store(dkt + d * kBb + v * kL, dk[v]);
  }
  // Without this barrier GCC proves dsb holds ds and hoists the lane broadcasts (vpermd) out of
  // the loop below, spilling them; reloading dsb lets each FMA broadcast straight from L1.
  asm volatile("" : : "r"(&dsb[0][0]) : "memory");
  rows_axpy(t.dq, nullptr, &dsb[0][0], NV * kL, krows, NV * kL, Dp);
}

}  // namespace

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int H, int K, int D, const int* pos) {
  check_args(B, T, H, K, D);
  check_attention_positions(pos, B, T);
  if (T == 0) return;
  auto first = [&](int b, int i) { return first_key(pos, b, T, i); };
  const Layout L{T, H, K, D};
  const int Dp = (D + kL - 1) / kL * kL;
  const int G = H / K;  // query heads per kv head
  const int Tp = (T + kR - 1) / kR * kR;
  const float scale = float(1.0 / std::sqrt(double(D))), c = scale * kLog2e;
  // One task per (b, kv head): it owns that head's dK, dV and the dQ of its G query heads, so
  // no two threads write the same gradient and the summation order is fixed (deterministic).
  // Key tiles outermost: a tile's K, V and its dK, dV accumulators stay in L1 while every query
  // of every head in the group streams past it (FlashAttention-2's backward order).
  parallel_for(int64_t(B) * K, [&](int64_t task) {
    const int b = int(task / K), g = int(task % K);
    const size_t tile = size_t(D) * kBb, rows = size_t(G) * Tp;
    float* kt = scratch(4 * tile + size_t(kBb) * Dp + rows * (Dp + 2));
    float* vt = kt + tile;   // (D, kBb) this tile's keys / values, transposed
    float* dkt = vt + tile;  // (D, kBb) its dK / dV accumulators, transposed
    float* dvt = dkt + tile;
    float* krows = dvt + tile;             // (kBb, Dp) keys by row
    float* dq = krows + size_t(kBb) * Dp;  // (G, Tp, Dp) dQ accumulators, unscaled
    float* Di = dq + rows * Dp;            // (G, Tp) dO . O
    float* lse2 = Di + rows;               // (G, Tp) lse in base 2
    std::fill(dq, dq + rows * Dp, 0.0f);
    for (int hg = 0; hg < G; ++hg) {
      const int h = g * G + hg;
      for (int i = 0; i < Tp; ++i) {
        float acc = 0.0f;
        if (i < T) {
          const float *dO = dout + L.o(b, i, h), *o = out + L.o(b, i, h);
#pragma omp simd reduction(+ : acc)
          for (int d = 0; d < D; ++d) acc += dO[d] * o[d];
        }
        Di[hg * Tp + i] = acc;
        lse2[hg * Tp + i] = i < T ? lse[(int64_t(b) * H + h) * T + i] * kLog2e : 0.0f;
      }
    }
    for (int j0 = 0; j0 < T; j0 += kBb) {
      const int nk = std::min(kBb, T - j0);
      load_transposed(kt, kBb, qkv + L.k(b, j0, g), L.W(), nk, D);
      load_transposed(vt, kBb, qkv + L.v(b, j0, g), L.W(), nk, D);
      load_rows(krows, kBb, Dp, qkv + L.k(b, j0, g), L.W(), nk, D);
      std::fill(dkt, dkt + 2 * tile, 0.0f);
      for (int hg = 0; hg < G; ++hg) {
        const int h = g * G + hg;
        // Causal: only queries i >= j0 see this tile; j0 is a multiple of kR. Packed, none whose
        // sequence starts after the tile (the starts only grow with i).
        for (int r0 = j0; r0 < T && first(b, r0) < j0 + nk; r0 += kR) {
          BwdRows t;
          for (int r = 0; r < kR; ++r) {
            const int i = std::min(r0 + r, T - 1);  // padding rows read row T-1, see no keys
            t.q[r] = qkv + L.q(b, i, h);
            t.dO[r] = dout + L.o(b, i, h);
            t.lse2[r] = lse2[hg * Tp + r0 + r];
            t.Di[r] = Di[hg * Tp + r0 + r];
            t.bound[r] = r0 + r < T ? float(r0 + r) : -1.0f;
            t.lo[r] = float(first(b, i));
          }
          t.dq = dq + (size_t(hg) * Tp + r0) * Dp;
          // Key vectors not wholly in these rows' future; mask where some key is after some row.
          const int nv = std::min(kNVb, (r0 + kR - 1 - j0) / kL + 1);
          const bool mask = r0 < j0 + nv * kL - 1 || r0 + kR > T || t.lo[kR - 1] > float(j0);
          if (nv == 1)
            bwd_step<1>(t, kt, vt, krows, dkt, dvt, D, Dp, c, j0, mask);
          else
            bwd_step<2>(t, kt, vt, krows, dkt, dvt, D, Dp, c, j0, mask);
        }
      }
      for (int j = 0; j < nk; ++j) {
        float *dk = dqkv + L.k(b, j0 + j, g), *dv = dqkv + L.v(b, j0 + j, g);
        for (int d = 0; d < D; ++d) {
          dk[d] = dkt[d * kBb + j] * scale;
          dv[d] = dvt[d * kBb + j];
        }
      }
    }
    for (int hg = 0; hg < G; ++hg)
      for (int i = 0; i < T; ++i) {
        float* dst = dqkv + L.q(b, i, g * G + hg);
        const float* src = dq + (size_t(hg) * Tp + i) * Dp;
        for (int d = 0; d < D; ++d) dst[d] = src[d] * scale;
      }
  });
}

}  // namespace kiln::ops::cpu

// Causal GQA flash attention for training on the GPU: the contract of ops/attention.h (checked
// against ops::cpu::attention_*). Two paths:
//
// - Generic (float, and bf16 when D is not 64/128 or a pointer is not 16-byte aligned): SIMT fp32,
//   32-query x 32-key tiles in shared memory, one key per lane, an online softmax per query row.
// - Tensor cores (bf16, D = 64 or 128): WMMA 16x16x16 bf16 fragments with fp32 accumulators,
//   64-query x 64-key tiles, 4 warps each owning 16 rows; scores and the softmax in fp32 through
//   shared memory (WMMA fragments have no documented element layout, so row-wise work is SIMT).
//
// Backward (both paths) is FlashAttention-2's split without atomics, so it is deterministic:
//   1. Di = dO_i . O_i per query row (B*H*T floats of scratch);
//   2. one block per (key tile, kv head): dK, dV of its keys, looping over the query heads of the
//      group and the query tiles at or after the keys, in a fixed order;
//   3. one block per (query tile, query head): dQ, looping over key tiles up to the diagonal.
// P and dS are recomputed in both 2 and 3 (7 matmuls instead of 5: the price of no atomics).
//
// Scores are kept in base 2: s2 = q.k * scale * log2(e), p = 2^(s2 - m2); lse is returned in
// natural log. Causal: tiles fully above the diagonal are never visited; the diagonal tile and the
// ragged end (rows or keys >= T, loaded as zeros) are masked element-wise.
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kiln/cuda/attention.h"
#include "kiln/cuda/device_types.cuh"

namespace kiln::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Offsets into packed qkv (B,T,(H+2K)*D), out (B,T,H*D) and lse (B,H,T).
struct Layout {
  int T, H, K, D;
  __host__ __device__ int64_t W() const { return int64_t(H + 2 * K) * D; }
  __host__ __device__ int64_t q(int b, int t, int h) const {
    return (int64_t(b) * T + t) * W() + int64_t(h) * D;
  }
  __host__ __device__ int64_t k(int b, int t, int g) const { return q(b, t, H + g); }
  __host__ __device__ int64_t v(int b, int t, int g) const { return q(b, t, H + K + g); }
  __host__ __device__ int64_t o(int b, int t, int h) const {
    return (int64_t(b) * T + t) * H * D + int64_t(h) * D;
  }
  __host__ __device__ int64_t row(int b, int h, int t) const {
    return (int64_t(b) * H + h) * T + t;
  }
};

// Dynamic shared memory above the default 48 KiB must be asked for, per kernel.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes, const char* op) {
  if (bytes > 48 * 1024)
    KILN_CUDA(
        op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// ---- 1. Di = dO . O (both paths) --------------------------------------------------------------

// One warp per (b, t, h) row; Di (B,H,T).
template <typename T>
__global__ void row_dot_kernel(float* Di, const T* dout, const T* out, int B, int Tn, int H,
                               int D) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= int64_t(B) * Tn * H) return;  // warp-uniform
  const T* a = dout + r * D;
  const T* o = out + r * D;
  float s = 0.0f;
  for (int d = lane; d < D; d += 32) s += to_f(a[d]) * to_f(o[d]);
  s = warp_sum(s);
  const int h = int(r % H), t = int(r / H % Tn), b = int(r / H / Tn);
  if (lane == 0) Di[(int64_t(b) * H + h) * Tn + t] = s;
}

// ---- generic path (SIMT fp32) -----------------------------------------------------------------

constexpr int kGT = 32;         // rows per query tile and keys per key tile
constexpr int kGThreads = 256;  // 8 warps
constexpr int kGWarps = kGThreads / 32;

// Row stride of a float tile in shared memory: odd, so lane j reading row j, column d hits bank
// (j * ld + d) % 32, distinct over the 32 lanes.
__host__ __device__ inline int odd_ld(int D) {
  return D | 1;
}

// dst (kGT rows, ld) <- rows row0.. of a (T, stride) matrix, D columns, times `mul`; rows >= T
// zero.
template <typename T>
__device__ void load_rows_f(float* dst, int ld, const T* src, int64_t stride, int row0, int Tn,
                            int D, float mul) {
  for (int idx = threadIdx.x; idx < kGT * D; idx += blockDim.x) {
    const int r = idx / D, d = idx % D, t = row0 + r;
    dst[r * ld + d] = t < Tn ? to_f(src[int64_t(t) * stride + d]) * mul : 0.0f;
  }
}

// Forward: block = (query tile, head, batch); warp w owns rows 4w..4w+3 of the tile; lane j scores
// key j of each key tile; lane owns output dims lane + 32c (c < NC, NC = ceil(D/32)).
template <typename T, int NC>
__global__ void __launch_bounds__(kGThreads)
    fwd_generic_kernel(T* out, float* lse, const T* qkv, int Tn, int H, int K, int D, float c) {
  constexpr int R = kGT / kGWarps;  // rows per warp
  extern __shared__ float smem[];
  const int ld = odd_ld(D);
  float* Qs = smem;           // (32, ld) queries, times scale*log2(e)
  float* Ks = Qs + kGT * ld;  // (32, ld)
  float* Vs = Ks + kGT * ld;  // (32, ld)
  const Layout L{Tn, H, K, D};
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / K);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i0 = qt * kGT;
  load_rows_f(Qs, ld, qkv + L.q(b, 0, h), L.W(), i0, Tn, D, c);
  float m[R], l[R], acc[R][NC];
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY, l[r] = 0.0f;
    for (int x = 0; x < NC; ++x) acc[r][x] = 0.0f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kGT;
    __syncthreads();  // the previous tile is consumed
    load_rows_f(Ks, ld, qkv + L.k(b, 0, g), L.W(), j0, Tn, D, 1.0f);
    load_rows_f(Vs, ld, qkv + L.v(b, 0, g), L.W(), j0, Tn, D, 1.0f);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = w * R + r, i = i0 + row;
      if (i >= Tn) continue;  // warp-uniform
      const float* q = Qs + row * ld;
      const float* k = Ks + lane * ld;
      float s = 0.0f;
      for (int d = 0; d < D; ++d) s += q[d] * k[d];
      if (j0 + lane > i) s = -INFINITY;  // causal (also covers keys >= T)
      // Key j0 <= i is visible, so m_new is finite.
      const float m_new = fmaxf(m[r], warp_max(s));
      const float p = exp2f(s - m_new), corr = exp2f(m[r] - m_new);  // corr 0 on the first tile
      l[r] = l[r] * corr + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int x = 0; x < NC; ++x) acc[r][x] *= corr;
      for (int j = 0; j < kGT; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int x = 0; x < NC; ++x) {
          const int d = lane + 32 * x;
          if (d < D) acc[r][x] += pj * Vs[j * ld + d];
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = i0 + w * R + r;
    if (i >= Tn) continue;
    const float inv = 1.0f / l[r];
#pragma unroll
    for (int x = 0; x < NC; ++x) {
      const int d = lane + 32 * x;
      if (d < D) out[L.o(b, i, h) + d] = from_f<T>(acc[r][x] * inv);
    }
    if (lane == 0) lse[L.row(b, h, i)] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// Shared memory of the generic backward kernels: Q, dO, K, V tiles (32, ld) and P, dS (32, 33)
// for one 32 x 32 (query, key) tile, and the tile's lse (base 2) and Di.
struct GenericBwdSmem {
  float *Qs, *dOs, *Ks, *Vs, *Ps, *dSs, *lse2, *Di;
  __device__ GenericBwdSmem(float* p, int ld) {
    Qs = p, dOs = Qs + kGT * ld, Ks = dOs + kGT * ld, Vs = Ks + kGT * ld;
    Ps = Vs + kGT * ld, dSs = Ps + kGT * 33, lse2 = dSs + kGT * 33, Di = lse2 + kGT;
  }
  static size_t bytes(int D) {
    return sizeof(float) * (4 * kGT * odd_ld(D) + 2 * kGT * 33 + 2 * kGT);
  }
};

// P and dS of the (query tile i0, key tile j0) pair into S.Ps / S.dSs, indexed [query][key]:
// thread (w, lane) computes queries w + 8x, key lane. Masked entries are 0.
__device__ void generic_probs(const GenericBwdSmem& S, int ld, int i0, int j0, int Tn, int D,
                              float c) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = w; r < kGT; r += kGWarps) {
    const float *q = S.Qs + r * ld, *dO = S.dOs + r * ld;
    const float *k = S.Ks + lane * ld, *v = S.Vs + lane * ld;
    float s = 0.0f, dp = 0.0f;
    for (int d = 0; d < D; ++d) s += q[d] * k[d], dp += dO[d] * v[d];
    const int i = i0 + r, j = j0 + lane;
    const float p = (i < Tn && j <= i) ? exp2f(s * c - S.lse2[r]) : 0.0f;
    S.Ps[r * 33 + lane] = p;
    S.dSs[r * 33 + lane] = p * (dp - S.Di[r]);
  }
}

// lse (base 2) and Di of query rows row0.. of head h; rows >= T get 0 (their P is masked anyway).
__device__ void load_row_stats(float* lse2, float* Di_s, const float* lse, const float* Di,
                               int64_t base, int row0, int Tn, int n) {
  for (int r = threadIdx.x; r < n; r += blockDim.x) {
    const int i = row0 + r;
    lse2[r] = i < Tn ? lse[base + i] * kLog2e : 0.0f;
    Di_s[r] = i < Tn ? Di[base + i] : 0.0f;
  }
}

// dK, dV: block = (key tile, kv head, batch); thread (w, lane) owns key lane, dims w + 8x.
template <typename T, int NC>
__global__ void __launch_bounds__(kGThreads)
    bwd_kv_generic_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Di,
                          int Tn, int H, int K, int D, float scale) {
  constexpr int NB = NC * 32 / kGWarps;  // dims per thread
  extern __shared__ float smem[];
  const int ld = odd_ld(D);
  const GenericBwdSmem S(smem, ld);
  const Layout L{Tn, H, K, D};
  const int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z, G = H / K;
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = kt * kGT, nqt = (Tn + kGT - 1) / kGT;
  const float c = scale * kLog2e;
  load_rows_f(S.Ks, ld, qkv + L.k(b, 0, g), L.W(), j0, Tn, D, 1.0f);
  load_rows_f(S.Vs, ld, qkv + L.v(b, 0, g), L.W(), j0, Tn, D, 1.0f);
  float dk[NB], dv[NB];
  for (int x = 0; x < NB; ++x) dk[x] = dv[x] = 0.0f;
  for (int hg = 0; hg < G; ++hg) {
    const int h = g * G + hg;
    for (int qt = kt; qt < nqt; ++qt) {  // causal: queries before j0 see none of these keys
      const int i0 = qt * kGT;
      __syncthreads();  // the previous tile is consumed
      load_rows_f(S.Qs, ld, qkv + L.q(b, 0, h), L.W(), i0, Tn, D, 1.0f);
      load_rows_f(S.dOs, ld, dout + L.o(b, 0, h), int64_t(H) * D, i0, Tn, D, 1.0f);
      load_row_stats(S.lse2, S.Di, lse, Di, L.row(b, h, 0), i0, Tn, kGT);
      __syncthreads();
      generic_probs(S, ld, i0, j0, Tn, D, c);
      __syncthreads();
      for (int r = 0; r < kGT; ++r) {
        const float p = S.Ps[r * 33 + lane], ds = S.dSs[r * 33 + lane];
#pragma unroll
        for (int x = 0; x < NB; ++x) {
          const int d = w + kGWarps * x;
          if (d < D) dv[x] += p * S.dOs[r * ld + d], dk[x] += ds * S.Qs[r * ld + d];
        }
      }
    }
  }
  const int j = j0 + lane;
  if (j >= Tn) return;
#pragma unroll
  for (int x = 0; x < NB; ++x) {
    const int d = w + kGWarps * x;
    if (d < D) {
      dqkv[L.k(b, j, g) + d] = from_f<T>(dk[x] * scale);
      dqkv[L.v(b, j, g) + d] = from_f<T>(dv[x]);
    }
  }
}

// dQ: block = (query tile, head, batch); thread (w, lane) owns query lane, dims w + 8x.
template <typename T, int NC>
__global__ void __launch_bounds__(kGThreads)
    bwd_q_generic_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Di,
                         int Tn, int H, int K, int D, float scale) {
  constexpr int NB = NC * 32 / kGWarps;
  extern __shared__ float smem[];
  const int ld = odd_ld(D);
  const GenericBwdSmem S(smem, ld);
  const Layout L{Tn, H, K, D};
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / K);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i0 = qt * kGT;
  const float c = scale * kLog2e;
  load_rows_f(S.Qs, ld, qkv + L.q(b, 0, h), L.W(), i0, Tn, D, 1.0f);
  load_rows_f(S.dOs, ld, dout + L.o(b, 0, h), int64_t(H) * D, i0, Tn, D, 1.0f);
  load_row_stats(S.lse2, S.Di, lse, Di, L.row(b, h, 0), i0, Tn, kGT);
  float dq[NB];
  for (int x = 0; x < NB; ++x) dq[x] = 0.0f;
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kGT;
    __syncthreads();  // the previous tile is consumed (and, first, the loads above are done)
    load_rows_f(S.Ks, ld, qkv + L.k(b, 0, g), L.W(), j0, Tn, D, 1.0f);
    load_rows_f(S.Vs, ld, qkv + L.v(b, 0, g), L.W(), j0, Tn, D, 1.0f);
    __syncthreads();
    generic_probs(S, ld, i0, j0, Tn, D, c);
    __syncthreads();
    for (int j = 0; j < kGT; ++j) {
      const float ds = S.dSs[lane * 33 + j];
#pragma unroll
      for (int x = 0; x < NB; ++x) {
        const int d = w + kGWarps * x;
        if (d < D) dq[x] += ds * S.Ks[j * ld + d];
      }
    }
  }
  const int i = i0 + lane;
  if (i >= Tn) return;
#pragma unroll
  for (int x = 0; x < NB; ++x) {
    const int d = w + kGWarps * x;
    if (d < D) dqkv[L.q(b, i, h) + d] = from_f<T>(dq[x] * scale);
  }
}

// ---- tensor-core path (bf16, D = 64 or 128) ---------------------------------------------------

constexpr int kTT = 64;         // rows per query tile and keys per key tile
constexpr int kTThreads = 128;  // 4 warps x 16 rows
constexpr int kLdS = kTT + 4;   // float score rows (a multiple of 4 for WMMA float stores)
constexpr int kLdP = kTT + 8;   // bf16 P / dS rows (a multiple of 8 for WMMA bf16 loads)

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// dst (64, D + 8) <- rows row0.. of a (T, stride) bf16 matrix; rows >= T zero. 16-byte copies:
// the caller checked that the base pointer, stride and D are multiples of 8 elements.
template <int D>
__device__ void load_tile_tc(bf16* dst, const bf16* src, int64_t stride, int row0, int Tn) {
  constexpr int kChunks = D / 8, ld = D + 8;
  for (int idx = threadIdx.x; idx < kTT * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, ch = idx % kChunks, t = row0 + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (t < Tn) v = *reinterpret_cast<const uint4*>(src + int64_t(t) * stride + ch * 8);
    *reinterpret_cast<uint4*>(dst + r * ld + ch * 8) = v;
  }
}

// Writes a warp's 16 rows x D floats (row stride ld, in shared memory) to bf16 rows row0.. of a
// (T, stride) matrix, times `mul`, 8 elements per 16-byte store; rows >= T skipped.
template <int D>
__device__ void store_rows_tc(bf16* dst, int64_t stride, const float* src, int ld, int row0, int Tn,
                              float mul) {
  constexpr int kChunks = D / 8;
  const int lane = threadIdx.x % 32;
  for (int idx = lane; idx < 16 * kChunks; idx += 32) {
    const int r = idx / kChunks, ch = idx % kChunks, t = row0 + r;
    if (t >= Tn) continue;
    alignas(16) bf16 v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = __float2bfloat16(src[r * ld + ch * 8 + e] * mul);
    *reinterpret_cast<uint4*>(dst + int64_t(t) * stride + ch * 8) =
        *reinterpret_cast<const uint4*>(v);
  }
}

// In the SIMT steps a lane owns row r = lane % 16 of its warp's 16 and half hf = lane / 16 of the
// columns. Lane's x-th value is column hf*n + (x + rot) % n' (n' = 32 or the half width), with
// rot = r + 16*hf: with row strides = 4 (mod 32) floats the 32 lanes then read 32 distinct banks.
__device__ __forceinline__ int lane_rot() {
  const int lane = threadIdx.x % 32;
  return (lane % 16) + 16 * (lane / 16);
}

template <int D>
struct TcFwdSmem {
  static constexpr int ldb = D + 8;                          // bf16 tile rows
  static constexpr int ldw = (D + 4 > kLdS) ? D + 4 : kLdS;  // float rows per warp region
  bf16 *Qs, *Ks, *Vs, *Ps;
  float* Ws;
  __device__ TcFwdSmem(unsigned char* p) {
    Ws = reinterpret_cast<float*>(p);  // 4 warps x (16, ldw): scores, then P V
    Qs = reinterpret_cast<bf16*>(Ws + 4 * 16 * ldw);
    Ks = Qs + kTT * ldb, Vs = Ks + kTT * ldb, Ps = Vs + kTT * ldb;  // Ps: 4 warps x (16, kLdP)
  }
  static constexpr size_t bytes() {
    return sizeof(float) * 4 * 16 * ldw + sizeof(bf16) * (3 * kTT * ldb + 4 * 16 * kLdP);
  }
};

template <int D>
__global__ void __launch_bounds__(kTThreads)
    fwd_tc_kernel(bf16* out, float* lse, const bf16* qkv, int Tn, int H, int K, float c) {
  using Sm = TcFwdSmem<D>;
  constexpr int ldb = Sm::ldb, ldw = Sm::ldw, NF = D / 16, HD = D / 2;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const Sm S(smem_raw);
  const Layout L{Tn, H, K, D};
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / K);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane % 16, hf = lane / 16, rot = lane_rot();
  const int i0 = qt * kTT, i = i0 + w * 16 + r;  // this lane's query row
  float* Ww = S.Ws + w * 16 * ldw;
  bf16* Pw = S.Ps + w * 16 * kLdP;

  load_tile_tc<D>(S.Qs, qkv + L.q(b, 0, h), L.W(), i0, Tn);
  __syncthreads();
  FragA qf[NF];
#pragma unroll
  for (int k = 0; k < NF; ++k) wmma::load_matrix_sync(qf[k], S.Qs + w * 16 * ldb + k * 16, ldb);

  float m = -INFINITY, l = 0.0f, o[HD];
#pragma unroll
  for (int x = 0; x < HD; ++x) o[x] = 0.0f;
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTT;
    __syncthreads();  // the previous K, V tiles are consumed
    load_tile_tc<D>(S.Ks, qkv + L.k(b, 0, g), L.W(), j0, Tn);
    load_tile_tc<D>(S.Vs, qkv + L.v(b, 0, g), L.W(), j0, Tn);
    __syncthreads();
    // S = Q K^T for the warp's 16 rows x 64 keys; K (key, d) row-major is K^T column-major.
    // (Loops over output fragments stay rolled: unrolled, ptxas hoists every operand fragment
    // and runs out of registers.)
#pragma unroll 1
    for (int n = 0; n < kTT / 16; ++n) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int k = 0; k < NF; ++k) {
        FragBCol kf;
        wmma::load_matrix_sync(kf, S.Ks + n * 16 * ldb + k * 16, ldb);
        wmma::mma_sync(acc, qf[k], kf, acc);
      }
      wmma::store_matrix_sync(Ww + n * 16, acc, ldw, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax, row r, columns hf*32 + (x + rot) % 32. Rows past the diagonal always see
    // key j0 <= i0 <= i, so m_new is finite; rows >= T read zero queries and are never written.
    float s[32], mx = -INFINITY;
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      const int col = hf * 32 + ((x + rot) & 31);
      s[x] = j0 + col > i ? -INFINITY : Ww[r * ldw + col] * c;
      mx = fmaxf(mx, s[x]);
    }
    const float m_new = fmaxf(m, fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16)));
    const float corr = exp2f(m - m_new);
    float sum = 0.0f;
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      const int col = hf * 32 + ((x + rot) & 31);
      const bf16 p = __float2bfloat16(exp2f(s[x] - m_new));
      sum += __bfloat162float(p);  // l sums the P that P V uses
      Pw[r * kLdP + col] = p;
    }
    l = l * corr + sum + __shfl_xor_sync(0xffffffffu, sum, 16);
    m = m_new;
    __syncwarp();
    // P V (16 x D) into the warp's float region (the scores are consumed).
#pragma unroll 1
    for (int n = 0; n < NF; ++n) {
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int k = 0; k < kTT / 16; ++k) {
        FragA pf;
        FragBRow vf;
        wmma::load_matrix_sync(pf, Pw + k * 16, kLdP);
        wmma::load_matrix_sync(vf, S.Vs + k * 16 * ldb + n * 16, ldb);
        wmma::mma_sync(acc, pf, vf, acc);
      }
      wmma::store_matrix_sync(Ww + n * 16, acc, ldw, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int x = 0; x < HD; ++x) o[x] = o[x] * corr + Ww[r * ldw + hf * HD + (x + rot) % HD];
    __syncwarp();  // before the next tile's scores overwrite Ww
  }
  // Normalize and stage the warp's 16 rows through Ww for 16-byte stores.
  const float inv = 1.0f / l;
#pragma unroll
  for (int x = 0; x < HD; ++x) Ww[r * ldw + hf * HD + (x + rot) % HD] = o[x] * inv;
  if (hf == 0 && i < Tn) lse[L.row(b, h, i)] = (m + log2f(l)) * kLn2;
  __syncwarp();
  store_rows_tc<D>(out + L.o(b, 0, h), int64_t(H) * D, Ww, ldw, i0 + w * 16, Tn, 1.0f);
}

// Shared memory of the tensor-core backward kernels: four bf16 tiles (64, D + 8), per warp two
// float (16, kLdS) regions (S and dP) and two bf16 (16, kLdP) regions (P and dS), and the 64 rows'
// lse (base 2) and Di.
template <int D>
struct TcBwdSmem {
  static constexpr int ldb = D + 8;
  static constexpr int wf = 2 * 16 * kLdS;  // floats per warp (also holds 16 x (D + 4) at the end)
  static_assert(16 * (D + 4) <= wf, "the output staging fits the warp's float region");
  float* Wf;
  bf16 *T0, *T1, *T2, *T3, *Wb;
  float *lse2, *Di;
  __device__ TcBwdSmem(unsigned char* p) {
    Wf = reinterpret_cast<float*>(p);
    T0 = reinterpret_cast<bf16*>(Wf + 4 * wf);
    T1 = T0 + kTT * ldb, T2 = T1 + kTT * ldb, T3 = T2 + kTT * ldb;
    Wb = T3 + kTT * ldb;  // 4 warps x 2 x (16, kLdP)
    lse2 = reinterpret_cast<float*>(Wb + 4 * 2 * 16 * kLdP);
    Di = lse2 + kTT;
  }
  static constexpr size_t bytes() {
    return sizeof(float) * (4 * wf + 2 * kTT) + sizeof(bf16) * (4 * kTT * ldb + 4 * 2 * 16 * kLdP);
  }
};

// dK, dV: block = (key tile, kv head, batch); warp w owns keys j0 + 16w.. and keeps their dK, dV
// in accumulator fragments across every query tile of every head in the group.
template <int D>
__global__ void __launch_bounds__(kTThreads)
    bwd_kv_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                     const float* Di, int Tn, int H, int K, float scale) {
  using Sm = TcBwdSmem<D>;
  constexpr int ldb = Sm::ldb, NF = D / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const Sm S(smem_raw);
  bf16 *Ks = S.T0, *Vs = S.T1, *Qs = S.T2, *dOs = S.T3;
  const Layout L{Tn, H, K, D};
  const int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z, G = H / K;
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane % 16, hf = lane / 16, rot = lane_rot();
  const int j0 = kt * kTT, j = j0 + w * 16 + r;  // this lane's key
  const int nqt = (Tn + kTT - 1) / kTT;
  const float c = scale * kLog2e;
  float* Sw = S.Wf + w * Sm::wf;  // S^T (keys x queries)
  float* dPw = Sw + 16 * kLdS;    // dP^T
  bf16* Pw = S.Wb + w * 2 * 16 * kLdP;
  bf16* dSw = Pw + 16 * kLdP;

  load_tile_tc<D>(Ks, qkv + L.k(b, 0, g), L.W(), j0, Tn);
  load_tile_tc<D>(Vs, qkv + L.v(b, 0, g), L.W(), j0, Tn);
  FragC dk[NF], dv[NF];
#pragma unroll
  for (int n = 0; n < NF; ++n) wmma::fill_fragment(dk[n], 0.0f), wmma::fill_fragment(dv[n], 0.0f);
  for (int hg = 0; hg < G; ++hg) {
    const int h = g * G + hg;
    for (int qt = kt; qt < nqt; ++qt) {  // causal: queries before j0 see none of these keys
      const int i0 = qt * kTT;
      __syncthreads();  // the previous query tile is consumed
      load_tile_tc<D>(Qs, qkv + L.q(b, 0, h), L.W(), i0, Tn);
      load_tile_tc<D>(dOs, dout + L.o(b, 0, h), int64_t(H) * D, i0, Tn);
      load_row_stats(S.lse2, S.Di, lse, Di, L.row(b, h, 0), i0, Tn, kTT);
      __syncthreads();
      // S^T = K Q^T and dP^T = V dO^T for the warp's 16 keys x 64 queries.
#pragma unroll 1
      for (int n = 0; n < kTT / 16; ++n) {
        FragC s, dp;
        wmma::fill_fragment(s, 0.0f);
        wmma::fill_fragment(dp, 0.0f);
#pragma unroll
        for (int k = 0; k < NF; ++k) {
          FragA a;
          FragBCol bq;
          wmma::load_matrix_sync(a, Ks + w * 16 * ldb + k * 16, ldb);
          wmma::load_matrix_sync(bq, Qs + n * 16 * ldb + k * 16, ldb);
          wmma::mma_sync(s, a, bq, s);
          wmma::load_matrix_sync(a, Vs + w * 16 * ldb + k * 16, ldb);
          wmma::load_matrix_sync(bq, dOs + n * 16 * ldb + k * 16, ldb);
          wmma::mma_sync(dp, a, bq, dp);
        }
        wmma::store_matrix_sync(Sw + n * 16, s, kLdS, wmma::mem_row_major);
        wmma::store_matrix_sync(dPw + n * 16, dp, kLdS, wmma::mem_row_major);
      }
      __syncwarp();
      // P^T and dS^T, row r = key j, columns = queries i0 + col.
#pragma unroll
      for (int x = 0; x < 32; ++x) {
        const int col = hf * 32 + ((x + rot) & 31), i = i0 + col;
        const bool valid = i < Tn && j <= i;
        const float p = valid ? exp2f(Sw[r * kLdS + col] * c - S.lse2[col]) : 0.0f;
        const float ds = p * (dPw[r * kLdS + col] - S.Di[col]);
        Pw[r * kLdP + col] = __float2bfloat16(p);
        dSw[r * kLdP + col] = __float2bfloat16(ds);
      }
      __syncwarp();
      // dV += P^T dO, dK += dS^T Q.
#pragma unroll 1
      for (int k = 0; k < kTT / 16; ++k) {
        FragA pf, dsf;
        wmma::load_matrix_sync(pf, Pw + k * 16, kLdP);
        wmma::load_matrix_sync(dsf, dSw + k * 16, kLdP);
#pragma unroll
        for (int n = 0; n < NF; ++n) {
          FragBRow bf;
          wmma::load_matrix_sync(bf, dOs + k * 16 * ldb + n * 16, ldb);
          wmma::mma_sync(dv[n], pf, bf, dv[n]);
          wmma::load_matrix_sync(bf, Qs + k * 16 * ldb + n * 16, ldb);
          wmma::mma_sync(dk[n], dsf, bf, dk[n]);
        }
      }
    }
  }
  // Stage each result through the warp's float region, 16 x (D + 4), then 16-byte stores.
  float* Ow = S.Wf + w * Sm::wf;
  __syncwarp();
#pragma unroll
  for (int n = 0; n < NF; ++n)
    wmma::store_matrix_sync(Ow + n * 16, dk[n], D + 4, wmma::mem_row_major);
  __syncwarp();
  store_rows_tc<D>(dqkv + L.k(b, 0, g), L.W(), Ow, D + 4, j0 + w * 16, Tn, scale);
  __syncwarp();
#pragma unroll
  for (int n = 0; n < NF; ++n)
    wmma::store_matrix_sync(Ow + n * 16, dv[n], D + 4, wmma::mem_row_major);
  __syncwarp();
  store_rows_tc<D>(dqkv + L.v(b, 0, g), L.W(), Ow, D + 4, j0 + w * 16, Tn, 1.0f);
}

// dQ: block = (query tile, head, batch); warp w owns queries i0 + 16w.. and keeps their dQ in
// accumulator fragments across the key tiles up to the diagonal.
template <int D>
__global__ void __launch_bounds__(kTThreads)
    bwd_q_tc_kernel(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse,
                    const float* Di, int Tn, int H, int K, float scale) {
  using Sm = TcBwdSmem<D>;
  constexpr int ldb = Sm::ldb, NF = D / 16;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const Sm S(smem_raw);
  bf16 *Qs = S.T0, *dOs = S.T1, *Ks = S.T2, *Vs = S.T3;
  const Layout L{Tn, H, K, D};
  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (last) tiles first
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / K);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r = lane % 16, hf = lane / 16, rot = lane_rot();
  const int i0 = qt * kTT, i = i0 + w * 16 + r;  // this lane's query
  const float c = scale * kLog2e;
  float* Sw = S.Wf + w * Sm::wf;
  float* dPw = Sw + 16 * kLdS;
  bf16* dSw = S.Wb + w * 2 * 16 * kLdP;

  load_tile_tc<D>(Qs, qkv + L.q(b, 0, h), L.W(), i0, Tn);
  load_tile_tc<D>(dOs, dout + L.o(b, 0, h), int64_t(H) * D, i0, Tn);
  load_row_stats(S.lse2, S.Di, lse, Di, L.row(b, h, 0), i0, Tn, kTT);
  __syncthreads();
  const float lse2_i = S.lse2[w * 16 + r], Di_i = S.Di[w * 16 + r];
  FragC dq[NF];
#pragma unroll
  for (int n = 0; n < NF; ++n) wmma::fill_fragment(dq[n], 0.0f);
  for (int kt = 0; kt <= qt; ++kt) {
    const int j0 = kt * kTT;
    __syncthreads();  // the previous K, V tiles are consumed
    load_tile_tc<D>(Ks, qkv + L.k(b, 0, g), L.W(), j0, Tn);
    load_tile_tc<D>(Vs, qkv + L.v(b, 0, g), L.W(), j0, Tn);
    __syncthreads();
    // S = Q K^T and dP = dO V^T for the warp's 16 queries x 64 keys.
#pragma unroll 1
    for (int n = 0; n < kTT / 16; ++n) {
      FragC s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
#pragma unroll
      for (int k = 0; k < NF; ++k) {
        FragA a;
        FragBCol bk;
        wmma::load_matrix_sync(a, Qs + w * 16 * ldb + k * 16, ldb);
        wmma::load_matrix_sync(bk, Ks + n * 16 * ldb + k * 16, ldb);
        wmma::mma_sync(s, a, bk, s);
        wmma::load_matrix_sync(a, dOs + w * 16 * ldb + k * 16, ldb);
        wmma::load_matrix_sync(bk, Vs + n * 16 * ldb + k * 16, ldb);
        wmma::mma_sync(dp, a, bk, dp);
      }
      wmma::store_matrix_sync(Sw + n * 16, s, kLdS, wmma::mem_row_major);
      wmma::store_matrix_sync(dPw + n * 16, dp, kLdS, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int x = 0; x < 32; ++x) {
      const int col = hf * 32 + ((x + rot) & 31), jj = j0 + col;
      const bool valid = i < Tn && jj <= i;
      const float p = valid ? exp2f(Sw[r * kLdS + col] * c - lse2_i) : 0.0f;
      dSw[r * kLdP + col] = __float2bfloat16(p * (dPw[r * kLdS + col] - Di_i));
    }
    __syncwarp();
    // dQ += dS K.
#pragma unroll 1
    for (int k = 0; k < kTT / 16; ++k) {
      FragA dsf;
      wmma::load_matrix_sync(dsf, dSw + k * 16, kLdP);
#pragma unroll
      for (int n = 0; n < NF; ++n) {
        FragBRow kf;
        wmma::load_matrix_sync(kf, Ks + k * 16 * ldb + n * 16, ldb);
        wmma::mma_sync(dq[n], dsf, kf, dq[n]);
      }
    }
  }
  __syncwarp();
#pragma unroll
  for (int n = 0; n < NF; ++n)
    wmma::store_matrix_sync(Sw + n * 16, dq[n], D + 4, wmma::mem_row_major);
  __syncwarp();
  store_rows_tc<D>(dqkv + L.q(b, 0, h), L.W(), Sw, D + 4, i0 + w * 16, Tn, scale);
}

// ---- host ------------------------------------------------------------------------------------

void check_args(int B, int Tn, int H, int K, int D, bool is_bf16) {
  KILN_CHECK(B >= 0 && Tn >= 0, "cuda attention", "bad shape B=", B, " T=", Tn);
  KILN_CHECK(K > 0 && H > 0 && H % K == 0, "cuda attention", "query heads H=", H,
             " must be a positive multiple of kv heads K=", K);
  KILN_CHECK(D > 0 && D <= 256, "cuda attention", "head dim D=", D,
             " is not supported: it must be in 1..256");
  KILN_CHECK(!is_bf16 || D % 8 == 0, "cuda attention", "bf16 head dim D=", D,
             " must be a multiple of 8");
  KILN_CHECK(int64_t(B) <= 65535 && int64_t(H) <= 65535, "cuda attention", "B=", B, " H=", H,
             " exceed the grid's 65535 limit");
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename T>
constexpr bool kIsBf16 = std::is_same_v<T, bf16>;

// The tensor-core path: bf16, D = 64 or 128, every pointer 16-byte aligned (so rows of 8
// elements copy as one 16-byte word; D and the row widths are multiples of 8).
template <typename T>
bool use_tc(int D, std::initializer_list<const void*> ptrs) {
  if constexpr (!kIsBf16<T>) {
    return false;
  } else {
    if (D != 64 && D != 128) return false;
    for (const void* p : ptrs)
      if (!aligned16(p)) return false;
    return true;
  }
}

// Calls f(std::integral_constant<int, NC>) with NC = ceil(D / 32) in 1..8.
template <typename F>
void with_nc(int D, F&& f) {
  switch ((D + 31) / 32) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

}  // namespace

template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, int B, int Tn, int H, int K, int D,
                       cudaStream_t s) {
  const char* op = "cuda attention_forward";
  check_args(B, Tn, H, K, D, kIsBf16<T>);
  if (B == 0 || Tn == 0) return;
  const float scale = float(1.0 / std::sqrt(double(D)));
  const float c = scale * kLog2e;
  if constexpr (kIsBf16<T>) {
    if (use_tc<T>(D, {out, qkv})) {
      const dim3 grid((Tn + kTT - 1) / kTT, H, B);
      auto launch = [&](auto kernel, size_t smem) {
        allow_smem(kernel, smem, op);
        kernel<<<grid, kTThreads, smem, s>>>(out, lse, qkv, Tn, H, K, c);
        check_launch(op);
      };
      if (D == 64)
        launch(fwd_tc_kernel<64>, TcFwdSmem<64>::bytes());
      else
        launch(fwd_tc_kernel<128>, TcFwdSmem<128>::bytes());
      return;
    }
  }
  const dim3 grid((Tn + kGT - 1) / kGT, H, B);
  const size_t smem = sizeof(float) * 3 * kGT * odd_ld(D);
  with_nc(D, [&](auto nc) {
    auto kernel = fwd_generic_kernel<T, decltype(nc)::value>;
    allow_smem(kernel, smem, op);
    kernel<<<grid, kGThreads, smem, s>>>(out, lse, qkv, Tn, H, K, D, c);
    check_launch(op);
  });
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int B,
                        int Tn, int H, int K, int D, cudaStream_t s) {
  const char* op = "cuda attention_backward";
  check_args(B, Tn, H, K, D, kIsBf16<T>);
  if (B == 0 || Tn == 0) return;
  const float scale = float(1.0 / std::sqrt(double(D)));
  const int64_t rows = int64_t(B) * H * Tn;
  DeviceBuffer<float> Di(rows, op, s);  // stream-ordered: freed after the kernels below
  {
    constexpr int kWarps = 8;
    const int64_t blocks = (rows + kWarps - 1) / kWarps;
    KILN_CHECK(blocks < (int64_t(1) << 31), op, "B*H*T=", rows, " rows exceed the grid");
    row_dot_kernel<T><<<unsigned(blocks), kWarps * 32, 0, s>>>(Di.data(), dout, out, B, Tn, H, D);
    check_launch(op);
  }
  if constexpr (kIsBf16<T>) {
    if (use_tc<T>(D, {dqkv, dout, qkv})) {
      const int nt = (Tn + kTT - 1) / kTT;
      auto launch = [&](auto kv_kernel, auto q_kernel, size_t smem) {
        allow_smem(kv_kernel, smem, op);
        kv_kernel<<<dim3(nt, K, B), kTThreads, smem, s>>>(dqkv, dout, qkv, lse, Di.data(), Tn, H, K,
                                                          scale);
        check_launch(op);
        allow_smem(q_kernel, smem, op);
        q_kernel<<<dim3(nt, H, B), kTThreads, smem, s>>>(dqkv, dout, qkv, lse, Di.data(), Tn, H, K,
                                                         scale);
        check_launch(op);
      };
      if (D == 64)
        launch(bwd_kv_tc_kernel<64>, bwd_q_tc_kernel<64>, TcBwdSmem<64>::bytes());
      else
        launch(bwd_kv_tc_kernel<128>, bwd_q_tc_kernel<128>, TcBwdSmem<128>::bytes());
      return;
    }
  }
  const int nt = (Tn + kGT - 1) / kGT;
  const size_t smem = GenericBwdSmem::bytes(D);
  with_nc(D, [&](auto nc) {
    constexpr int NC = decltype(nc)::value;
    auto kv_kernel = bwd_kv_generic_kernel<T, NC>;
    allow_smem(kv_kernel, smem, op);
    kv_kernel<<<dim3(nt, K, B), kGThreads, smem, s>>>(dqkv, dout, qkv, lse, Di.data(), Tn, H, K, D,
                                                      scale);
    check_launch(op);
    auto q_kernel = bwd_q_generic_kernel<T, NC>;
    allow_smem(q_kernel, smem, op);
    q_kernel<<<dim3(nt, H, B), kGThreads, smem, s>>>(dqkv, dout, qkv, lse, Di.data(), Tn, H, K, D,
                                                     scale);
    check_launch(op);
  });
}

template void attention_forward<float>(float*, float*, const float*, int, int, int, int, int,
                                       cudaStream_t);
template void attention_forward<bf16>(bf16*, float*, const bf16*, int, int, int, int, int,
                                      cudaStream_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        const float*, int, int, int, int, int, cudaStream_t);
template void attention_backward<bf16>(bf16*, const bf16*, const bf16*, const bf16*, const float*,
                                       int, int, int, int, int, cudaStream_t);

}  // namespace kiln::cuda

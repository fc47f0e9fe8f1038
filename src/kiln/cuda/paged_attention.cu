// Decode attention over the paged KV cache on the device (infer/paged_attention.h's contract) and
// the cache write that fills it. Flash-decoding: each (row, kv head, split of kPagedSplitTokens
// positions) is one thread block computing the group's query heads over its positions with an
// online softmax, one cache block (kPagedBlockTokens positions) per step; a second kernel merges
// the splits of a row by log-sum-exp in split order, so a row's result depends only on its own
// sequence. A row with one split is written directly and skips the merge.
//
// Napkin math: decode is memory bound, reading (pos+1) * 2 * K * D elements per row and layer
// (H100: ~3 TB/s, so 1 ms per 3 GB of cache). The work per byte is G = H/K dot products of D,
// which the fp32 SIMT lanes do far faster than the bytes arrive.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kiln/cuda/attention.h"
#include "kiln/cuda/device_types.cuh"

namespace kiln::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kBT = kPagedBlockTokens;
static_assert(kBT == 16, "a half warp scores one cache block: one position per lane");
static_assert(kPagedSplitTokens % kBT == 0, "splits hold whole cache blocks");

template <typename T>
__device__ __forceinline__ T from_f(float x) {
  if constexpr (std::is_same_v<T, bf16>)
    return __float2bfloat16(x);
  else
    return x;
}

// Offset of the K (kv = 0) or V (kv = 1) rows of `layer` in physical block `blk` of the pool
// (num_blocks, layers, 2, kBT, kv_dim).
__device__ __forceinline__ int64_t block_base(int blk, int layer, int layers, int kv, int kv_dim) {
  return ((int64_t(blk) * layers + layer) * 2 + kv) * kBT * kv_dim;
}

__device__ __forceinline__ int num_splits(int pos) {
  return pos < 0 ? 0 : pos / kPagedSplitTokens + 1;
}

template <typename T>
__global__ void kv_write_kernel(T* pool, int layers, int kv_dim, int layer, const T* qkv,
                                int stride, int HD, const int* slots, int N) {
  const int64_t total = int64_t(N) * kv_dim;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int n = int(idx / kv_dim), e = int(idx % kv_dim);
    const int slot = slots[n];
    if (slot < 0) continue;  // a padding row
    const int blk = slot / kBT, off = slot % kBT;
    const T* row = qkv + int64_t(n) * stride + HD;  // the K heads; the V heads follow at + kv_dim
    pool[block_base(blk, layer, layers, 0, kv_dim) + int64_t(off) * kv_dim + e] = row[e];
    pool[block_base(blk, layer, layers, 1, kv_dim) + int64_t(off) * kv_dim + e] = row[kv_dim + e];
  }
}

// Partial results of one (row, kv head, split): per query head of the group, the unnormalized
// accumulator (D), then the running max m (base 2) and sum l.
__host__ __device__ inline int64_t part_index(int n, int g, int sp, int hg, int K, int S, int G,
                                              int D) {
  return (((int64_t(n) * K + g) * S + sp) * G + hg) * (D + 2);
}

// Block = (row n, split sp) in blockIdx.x = n * S + sp, kv head g = blockIdx.y. Warps take the
// group's query heads in turn; in a step, lane (t, half) = (lane % 16, lane / 16) dots position
// t of the cache block over the dims of its half, and lane owns dims lane + 32x of the output.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    paged_split_kernel(T* out, float* part, const T* qkv, int stride, const T* pool, int layers,
                       int kv_dim, int layer, const int* block_tables, int max_blocks,
                       const int* pos, int H, int K, int D, int S, float c) {
  extern __shared__ float smem[];
  const int G = H / K, ld = D | 1;  // odd row stride: lanes reading 16 rows hit distinct banks
  float* qs = smem;                 // (G, D) query heads, times scale * log2(e)
  float* acc = qs + G * D;          // (G, D)
  float* ml = acc + G * D;          // (G, 2) running max and sum
  float* Ks = ml + 2 * G;           // (kBT, ld)
  float* Vs = Ks + kBT * ld;
  const int n = blockIdx.x / S, sp = blockIdx.x % S, g = blockIdx.y;
  const int p = pos[n], splits = num_splits(p);
  if (sp >= splits) return;  // the whole block
  const int begin = sp * kPagedSplitTokens, end = min(p + 1, begin + kPagedSplitTokens);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* q = qkv + int64_t(n) * stride + int64_t(g) * G * D;  // the group's heads, contiguous
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    qs[idx] = to_f(q[idx]) * c;
    acc[idx] = 0.0f;
  }
  for (int hg = threadIdx.x; hg < G; hg += blockDim.x)
    ml[2 * hg] = -INFINITY, ml[2 * hg + 1] = 0.0f;
  const int* table = block_tables + int64_t(n) * max_blocks;
  for (int t0 = begin; t0 < end; t0 += kBT) {
    const int blk = table[t0 / kBT], cnt = min(kBT, end - t0);
    const T* kb = pool + block_base(blk, layer, layers, 0, kv_dim) + g * D;
    const T* vb = pool + block_base(blk, layer, layers, 1, kv_dim) + g * D;
    __syncthreads();  // the previous block is consumed (first: qs, acc, ml are written)
    for (int idx = threadIdx.x; idx < kBT * D; idx += blockDim.x) {
      const int t = idx / D, d = idx % D;
      const bool in = t < cnt;  // positions past `end` may be unwritten: zero, not garbage
      Ks[t * ld + d] = in ? to_f(kb[int64_t(t) * kv_dim + d]) : 0.0f;
      Vs[t * ld + d] = in ? to_f(vb[int64_t(t) * kv_dim + d]) : 0.0f;
    }
    __syncthreads();
    for (int hg = w; hg < G; hg += kWarps) {  // warp-uniform
      const int t = lane % 16, half = lane / 16;
      const float* qh = qs + hg * D;
      float s = 0.0f;
      for (int d = half; d < D; d += 2) s += qh[d] * Ks[t * ld + d];
      s += __shfl_xor_sync(0xffffffffu, s, 16);
      if (t >= cnt) s = -INFINITY;
      float mx = s;
      for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = ml[2 * hg], l_old = ml[2 * hg + 1];
      const float m_new = fmaxf(m_old, mx);  // finite: position t0 is in range
      const float pr = exp2f(s - m_new), corr = exp2f(m_old - m_new);
      float sum = pr;
      for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      float pt[kBT];
#pragma unroll
      for (int tt = 0; tt < kBT; ++tt) pt[tt] = __shfl_sync(0xffffffffu, pr, tt);
      for (int d = lane; d < D; d += 32) {
        float a = acc[hg * D + d] * corr;
#pragma unroll
        for (int tt = 0; tt < kBT; ++tt) a += pt[tt] * Vs[tt * ld + d];
        acc[hg * D + d] = a;
      }
      __syncwarp();  // every lane has read ml[hg] before lane 0 replaces it
      if (lane == 0) ml[2 * hg] = m_new, ml[2 * hg + 1] = l_old * corr + sum;
    }
  }
  __syncthreads();
  if (splits == 1) {
    T* o = out + int64_t(n) * H * D + int64_t(g) * G * D;
    for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x)
      o[idx] = from_f<T>(acc[idx] / ml[2 * (idx / D) + 1]);
    return;
  }
  for (int hg = 0; hg < G; ++hg) {
    float* pp = part + part_index(n, g, sp, hg, K, S, G, D);
    for (int d = threadIdx.x; d < D + 2; d += blockDim.x)
      pp[d] = d < D ? acc[hg * D + d] : ml[2 * hg + (d - D)];
  }
}

// Block = (row n, query head h) in blockIdx.x = n * H + h: merges the row's splits in order.
template <typename T>
__global__ void paged_merge_kernel(T* out, const float* part, const int* pos, int H, int K, int D,
                                   int S) {
  const int n = blockIdx.x / H, h = blockIdx.x % H, G = H / K, g = h / G, hg = h % G;
  const int splits = num_splits(pos[n]);
  if (splits == 1) return;  // written by the split kernel
  float M = -INFINITY, L = 0.0f;
  for (int sp = 0; sp < splits; ++sp) M = fmaxf(M, part[part_index(n, g, sp, hg, K, S, G, D) + D]);
  for (int sp = 0; sp < splits; ++sp) {
    const float* pp = part + part_index(n, g, sp, hg, K, S, G, D);
    L += exp2f(pp[D] - M) * pp[D + 1];
  }
  T* o = out + int64_t(n) * H * D + int64_t(h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.0f;
    for (int sp = 0; sp < splits; ++sp) {
      const float* pp = part + part_index(n, g, sp, hg, K, S, G, D);
      a += exp2f(pp[D] - M) * pp[d];
    }
    o[d] = from_f<T>(splits == 0 ? 0.0f : a / L);  // no position (pos < 0): zeros
  }
}

}  // namespace

template <typename T>
void kv_cache_write(DevicePagedCache<T> cache, int layer, const T* qkv, int stride, int H, int K,
                    int D, const int* slots, int N, cudaStream_t s) {
  const char* op = "cuda kv_cache_write";
  KILN_CHECK(K > 0 && D > 0 && cache.kv_dim == K * D, op, "the cache's kv_dim=", cache.kv_dim,
             " must be K*D=", K, "*", D);
  KILN_CHECK(layer >= 0 && layer < cache.layers, op, "layer ", layer, " is outside 0..",
             cache.layers - 1);
  KILN_CHECK(N >= 0 && stride >= (H + 2 * K) * D, op, "row stride ", stride,
             " is shorter than the (H+2K)*D=", (H + 2 * K) * D, " of a qkv row");
  if (N == 0) return;
  const int64_t total = int64_t(N) * cache.kv_dim;
  const int blocks = int(std::min<int64_t>((total + 255) / 256, 65535));
  kv_write_kernel<T><<<blocks, 256, 0, s>>>(cache.pool, cache.layers, cache.kv_dim, layer, qkv,
                                            stride, H * D, slots, N);
  check_launch(op);
}

template <typename T>
void paged_attention(T* out, const T* qkv, int stride, DevicePagedCache<T> cache, int layer,
                     const int* block_tables, int max_blocks, const int* pos, int N, int H, int K,
                     int D, cudaStream_t s) {
  const char* op = "cuda paged_attention";
  KILN_CHECK(K > 0 && H > 0 && H % K == 0, op, "query heads H=", H,
             " must be a positive multiple of kv heads K=", K);
  KILN_CHECK(D > 0 && cache.kv_dim == K * D, op, "the cache's kv_dim=", cache.kv_dim,
             " must be K*D=", K, "*", D);
  KILN_CHECK(layer >= 0 && layer < cache.layers, op, "layer ", layer, " is outside 0..",
             cache.layers - 1);
  KILN_CHECK(N >= 0 && max_blocks > 0 && stride >= H * D, op, "bad rows: N=", N,
             " max_blocks=", max_blocks, " stride=", stride);
  KILN_CHECK(K <= 65535, op, "K=", K, " exceeds the grid's 65535 limit");
  if (N == 0) return;
  // Splits a row can have: positions are < max_blocks * kBT.
  const int S = int((int64_t(max_blocks) * kBT + kPagedSplitTokens - 1) / kPagedSplitTokens);
  KILN_CHECK(int64_t(N) * S < (int64_t(1) << 31) && int64_t(N) * H < (int64_t(1) << 31), op,
             "N=", N, " rows of ", S, " splits exceed the grid");
  const int G = H / K;
  const size_t smem = sizeof(float) * (2 * size_t(G) * D + 2 * G + 2 * kBT * (D | 1));
  if (smem > 48 * 1024)
    KILN_CUDA(op, cudaFuncSetAttribute(paged_split_kernel<T>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const float c = float(1.0 / std::sqrt(double(D))) * kLog2e;
  // Partials for rows with several splits: (N, K, S, G, D + 2) floats, from the stream's pool.
  DeviceBuffer<float> part(S > 1 ? int64_t(N) * K * S * G * (D + 2) : 0, op, s);
  paged_split_kernel<T><<<dim3(unsigned(N) * S, K), kThreads, smem, s>>>(
      out, part.data(), qkv, stride, cache.pool, cache.layers, cache.kv_dim, layer, block_tables,
      max_blocks, pos, H, K, D, S, c);
  check_launch(op);
  // Also for S == 1: rows with pos < 0 get zeros there.
  paged_merge_kernel<T><<<unsigned(N) * H, 64, 0, s>>>(out, part.data(), pos, H, K, D, S);
  check_launch(op);
}

template void kv_cache_write<float>(DevicePagedCache<float>, int, const float*, int, int, int, int,
                                    const int*, int, cudaStream_t);
template void kv_cache_write<bf16>(DevicePagedCache<bf16>, int, const bf16*, int, int, int, int,
                                   const int*, int, cudaStream_t);
template void paged_attention<float>(float*, const float*, int, DevicePagedCache<float>, int,
                                     const int*, int, const int*, int, int, int, int, cudaStream_t);
template void paged_attention<bf16>(bf16*, const bf16*, int, DevicePagedCache<bf16>, int,
                                    const int*, int, const int*, int, int, int, int, cudaStream_t);

}  // namespace kiln::cuda

// Attention on the GPU. Training: the contract of ops/attention.h (causal, GQA, packed qkv
// (B,T,(H+2K)*D), out (B,T,H*D), lse (B,H,T) fp32) as a flash attention: tiles of queries and
// keys in shared memory, an online softmax, never a T x T matrix in global memory; backward
// recomputes the probabilities from lse. Inference: decode attention over the paged KV cache of
// infer/kv_cache.h and infer/paged_attention.h, the pool kept on the device.
#pragma once

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {

// T is float or bf16; D up to 256 (a multiple of 8 for bf16). bf16 with D = 64 or 128 and 16-byte
// aligned pointers runs its products on tensor cores (WMMA, fp32 accumulation and softmax); every
// other case runs a SIMT fp32 path. Softmax and accumulation are fp32 throughout.
template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, int B, int Tn, int H, int K, int D,
                       cudaStream_t s);
// dqkv overwritten (q, k and v parts; k and v summed over each GQA group), deterministically: no
// atomics, every sum in a fixed order. Needs B*H*Tn floats of scratch (the rowwise
// dot(dout, out)), taken from the device pool.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int B,
                        int Tn, int H, int K, int D, cudaStream_t s);

// Positions per cache block: must equal kiln::kBlockTokens (infer/kv_cache.h, a layer above this
// one, which static_asserts the two agree).
constexpr int kPagedBlockTokens = 16;
// Positions per split of a long context in paged_attention (whole cache blocks).
constexpr int kPagedSplitTokens = 256;

// The paged KV pool on the device, the layout of KvCache's pool: (num_blocks, layers, 2,
// kBlockTokens, kv_dim), K before V in each block, kv_dim = K*D.
template <typename T>
struct DevicePagedCache {
  T* pool;
  int layers, kv_dim;
};

// Writes the K and V heads of N qkv rows (`stride` elements apart; K heads at column H*D, V heads
// at (H+K)*D) into the cache at slots[n] = block * kPagedBlockTokens + offset, for `layer`.
// A row with slots[n] < 0 (padding) is skipped. Needs kv_dim == K*D.
template <typename T>
void kv_cache_write(DevicePagedCache<T> cache, int layer, const T* qkv, int stride, int H, int K,
                    int D, const int* slots, int N, cudaStream_t s);

// infer/paged_attention.h on the device: out (N, H*D) from the q heads at the start of each qkv
// row; row n attends to positions 0..pos[n] of the sequence whose block table is row n of
// block_tables (N, max_blocks), so pos[n] < max_blocks * kPagedBlockTokens (pos[n] < 0: zeros).
// Contexts are split every kPagedSplitTokens positions over thread blocks and merged by
// log-sum-exp in split order, so a row's result does not depend on the batch. Scratch from the
// device pool: N*K*ceil(max_blocks*16/256)*(H/K)*(D+2) floats when max_blocks > 16.
template <typename T>
void paged_attention(T* out, const T* qkv, int stride, DevicePagedCache<T> cache, int layer,
                     const int* block_tables, int max_blocks, const int* pos, int N, int H, int K,
                     int D, cudaStream_t s);

}  // namespace kiln::cuda

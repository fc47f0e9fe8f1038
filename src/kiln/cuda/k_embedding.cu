// Embedding lookup and its gradient on the GPU (contract: ops/embedding.h).
//
// Forward: a row copy per token, 16-byte vectors when C and the pointers allow.
// Backward, deterministic without atomics: the (id, n) pairs are sorted by id with CUB's stable
// radix sort, so each id's tokens sit together in order of n; one block per run of equal ids
// then walks the run and adds the dout rows into dtable in order of n, exactly the order of the
// serial loop (for fp32 dout: the same bits as ops::cpu::embedding_backward). Cost: the sort
// (4 passes over 2N ints, tens of microseconds at N = 16K) plus one read of dout and one
// read-modify-write of each touched dtable row; the longest run (the most frequent token) is
// walked per column by one thread (8 rows' loads in flight), so a batch of one repeated token is
// the slow case.
#include <cub/device/device_radix_sort.cuh>

#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

using kern::kWarp;
using kern::load_vec;
using kern::store_vec;

constexpr int kThreads = 256;
constexpr int kUnroll = 8;  // backward: rows of a run loaded at once

// out (N,C) = (or +=) table[ids[n]] rows. Flat over N * C/V vectors.
template <typename T, int V>
__global__ void embedding_forward_kernel(T* out, const int* ids, const float* table, int N, int C,
                                         bool accumulate) {
  const int64_t cv = C / V, total = int64_t(N) * cv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / cv, j = i % cv;
    float t[V];
    load_vec<V>(t, table + int64_t(ids[n]) * C + j * V);
    T* o = out + n * C + j * V;
    if (accumulate) {
      float a[V];
      load_vec<V>(a, o);
#pragma unroll
      for (int k = 0; k < V; ++k) t[k] += a[k];
    }
    store_vec<V>(o, t);
  }
}

__global__ void iota_kernel(int* v, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v[i] = i;
}

// Block p (blockIdx.x) starts a run when sorted_ids[p] differs from its predecessor; it then adds
// the dout rows of the run (tokens sorted_n[p..]) into dtable's row, in order of n, for the
// columns of blockIdx.y.
template <typename T, int V>
__global__ void embedding_backward_kernel(float* dtable, const T* dout, const int* sorted_ids,
                                          const int* sorted_n, int N, int C) {
  const int p = blockIdx.x;
  const int id = sorted_ids[p];
  if (p > 0 && sorted_ids[p - 1] == id) return;  // not the start of a run
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j >= C / V) return;
  float* d = dtable + int64_t(id) * C + int64_t(j) * V;
  float acc[V];
  load_vec<V>(acc, d);
  const T* col = dout + int64_t(j) * V;
  int q = p;
  // kUnroll rows at a time while the run lasts (sorted: sorted_ids[q + kUnroll - 1] == id means
  // all of them are), so that many loads are in flight; the adds stay in order of n.
  for (; q + kUnroll <= N && sorted_ids[q + kUnroll - 1] == id; q += kUnroll) {
    float g[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load_vec<V>(g[u], col + int64_t(sorted_n[q + u]) * C);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += g[u][k];
  }
  for (; q < N && sorted_ids[q] == id; ++q) {
    float g[V];
    load_vec<V>(g, col + int64_t(sorted_n[q]) * C);
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] += g[k];
  }
  store_vec<V>(d, acc);
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int* ids, const float* table, int N, int C, bool accumulate,
                       cudaStream_t s) {
  const char* op = "cuda embedding_forward";
  KILN_CHECK(N >= 0 && C > 0, op, "need N >= 0 and C > 0, got N = ", N, ", C = ", C);
  if (N == 0) return;
  constexpr int V = 16 / sizeof(T);
  if (C % V == 0 && kern::aligned16(out) && kern::aligned16(table))
    embedding_forward_kernel<T, V>
        <<<kern::grid_for(int64_t(N) * (C / V), kThreads), kThreads, 0, s>>>(out, ids, table, N, C,
                                                                             accumulate);
  else
    embedding_forward_kernel<T, 1><<<kern::grid_for(int64_t(N) * C, kThreads), kThreads, 0, s>>>(
        out, ids, table, N, C, accumulate);
  check_launch(op);
}

template <typename T>
void embedding_backward(float* dtable, const T* dout, const int* ids, int N, int C,
                        cudaStream_t s) {
  const char* op = "cuda embedding_backward";
  KILN_CHECK(N >= 0 && C > 0, op, "need N >= 0 and C > 0, got N = ", N, ", C = ", C);
  if (N == 0) return;
  // Scratch: sorted ids, token order in and out, and CUB's temporary storage.
  size_t temp_bytes = 0;
  KILN_CUDA(op, cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (const int*)nullptr,
                                                (int*)nullptr, (const int*)nullptr, (int*)nullptr,
                                                N, 0, int(sizeof(int) * 8), s));
  const size_t ints = (size_t(3) * N + 63) / 64 * 64;  // keep CUB's storage 256-byte aligned
  char* scratch = static_cast<char*>(device_alloc(ints * sizeof(int) + temp_bytes, s, op));
  int* sorted_ids = reinterpret_cast<int*>(scratch);
  int* order = sorted_ids + N;
  int* sorted_n = order + N;
  void* temp = scratch + ints * sizeof(int);
  iota_kernel<<<kern::grid_for(N, kThreads), kThreads, 0, s>>>(order, N);
  check_launch(op);
  KILN_CUDA(op, cub::DeviceRadixSort::SortPairs(temp, temp_bytes, ids, sorted_ids, order, sorted_n,
                                                N, 0, int(sizeof(int) * 8), s));
  constexpr int V = 16 / sizeof(T) < 4 ? 16 / sizeof(T) : 4;  // dtable is fp32: 4 per 16 bytes
  const bool vec = C % V == 0 && kern::aligned16(dtable) &&
                   (reinterpret_cast<uintptr_t>(dout) % (V * sizeof(T))) == 0;
  const int cv = vec ? C / V : C;
  const int threads = cv < kThreads ? (cv + kWarp - 1) / kWarp * kWarp : kThreads;
  const dim3 grid(unsigned(N), unsigned((cv + threads - 1) / threads));
  KILN_CHECK(grid.y <= 65535u, op, "C = ", C, " is too large");
  if (vec)
    embedding_backward_kernel<T, V>
        <<<grid, threads, 0, s>>>(dtable, dout, sorted_ids, sorted_n, N, C);
  else
    embedding_backward_kernel<T, 1>
        <<<grid, threads, 0, s>>>(dtable, dout, sorted_ids, sorted_n, N, C);
  check_launch(op);
  device_free(scratch);
}

template void embedding_forward<float>(float*, const int*, const float*, int, int, bool,
                                       cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int*, const float*, int, int, bool,
                                      cudaStream_t);
template void embedding_backward<float>(float*, const float*, const int*, int, int, cudaStream_t);
template void embedding_backward<bf16>(float*, const bf16*, const int*, int, int, cudaStream_t);

}  // namespace kiln::cuda

// Decoding on one GPU (kiln bench infer --device cuda, kiln generate --device cuda): the model's
// weights on the device (bf16 GEMM copies, or fp32), a paged KV cache in device memory with the
// layout of KvCache's pool (kv_cache.h), and each forward pass run by the cuda layer's kernels
// (cuBLASLt GEMMs, paged decode attention). A call takes any rows (sequence, token, position):
// a prompt's tokens at once (prefill), or one token of each of many sequences (a decode step).
// Without the CUDA backend, the constructor throws an Error saying how to build with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/model/transformer.h"

namespace kiln {

class CudaDecoder {
 public:
  // Up to max_seqs sequences of up to max_len positions; up to max_rows rows per forward call
  // (at least max_seqs; a prompt longer than max_rows goes in several calls).
  CudaDecoder(const Model& model, int max_seqs, int max_len, int max_rows, bool bf16 = true);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  // Rows n < N: token tokens[n] of sequence seq[n] at position pos[n]. Writes each row's K/V
  // into the cache, then attends to positions 0..pos[n] of its sequence (so a prompt's rows go
  // in one call). next (N, host): the greedy next token of each row. logits (N x V, host), when
  // not null, receives the fp32 logits (for sampling on the host).
  void forward(const int* seq, const int* tokens, const int* pos, int N, int* next,
               float* logits = nullptr);

  int max_seqs() const;
  int max_len() const;
  size_t device_bytes() const;  // weights + KV cache + activations

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln

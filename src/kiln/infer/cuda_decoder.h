// The engine's forward pass on one GPU (forward_pass.h; kiln generate --device cuda): the
// model's weights on the device (bf16 GEMM copies, or fp32), K/V in device memory with the layout
// of KvCache's pool (kv_cache.h) and addressed through its block tables, each forward run by the
// cuda layer's kernels (cuBLASLt GEMMs, paged decode attention), both families (block_spec.h).
// CudaDecoder wraps it for callers without an engine (kiln bench infer --device cuda): numbered
// sequences, greedy tokens from an argmax on the device.
// Without the CUDA backend, the constructors throw an Error saying how to build with it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/infer/forward_pass.h"
#include "kiln/model/transformer.h"

namespace kiln {

// Positions up to max_ctx. fp32 weights only (quantized GGUF matrices run on the CPU).
std::unique_ptr<ForwardPass> make_cuda_forward_pass(const Model& model, int max_ctx,
                                                    bool bf16 = true);

class CudaDecoder {
 public:
  // Up to max_seqs sequences of up to max_len positions; up to max_rows rows per forward call
  // (at least max_seqs; a prompt longer than max_rows goes in several calls).
  CudaDecoder(const Model& model, int max_seqs, int max_len, int max_rows, bool bf16 = true);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  // Rows n < N: token tokens[n] of sequence seq[n] at position pos[n]; a sequence's rows continue
  // it at its length, or restart it at position 0. Writes each row's K/V into the cache, then
  // attends to positions 0..pos[n] of its sequence (so a prompt's rows go in one call). next (N,
  // host): the greedy next token of each row. logits (N x V, host), when not null, receives the
  // fp32 logits (for sampling on the host).
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

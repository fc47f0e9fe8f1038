// One forward pass of the model over a batch of rows, for the engine: each row is a token of
// some sequence at some position; its K and V go into that sequence's slot of the paged KvCache
// (block tables, kv_cache.h) and it attends to the sequence's positions 0..pos. One
// implementation per backend (CPU: cpu_forward_pass.cpp; CUDA: cuda_decoder.h), each covering both
// model families (block_spec.h) and fp32 or quantized weights (forward_weights.h). model/decoder.h,
// a separate single-sequence implementation, is the oracle they are tested against.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kiln/infer/forward_weights.h"
#include "kiln/infer/kv_cache.h"
#include "kiln/model/config.h"

namespace kiln {

class LoraWeights;

struct ForwardBatch {
  std::span<const int32_t> ids;         // (N) the token of each row
  std::span<const int> pos;             // (N) its position in its sequence
  std::span<const KvCache::SeqId> seq;  // (N) its sequence; prepare_append covers pos
  std::span<const int> logit_rows;      // (M) rows whose logits are wanted, ascending
  // (N) each row's LoRA adapter (model/lora.h; null: the base alone), or empty when no row has
  // one. Rows of different adapters share the base's GEMMs; each adapter's low-rank terms are
  // added over its rows, gathered into one block (as Punica's segmented kernels do).
  std::span<const LoraWeights* const> adapter = {};
};

class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  // Writes each row's K/V into the cache, then logits (M, V) for batch.logit_rows (resized).
  // The caller commits the rows to the cache afterwards. A row's result depends only on its
  // sequence, not on the rest of the batch.
  virtual void forward(const ForwardBatch& batch, KvCache& cache, std::vector<float>& logits) = 0;
  // Whether K/V live in the cache's host pool (the CPU), or in the pass's own storage with the
  // pool's block layout (the GPU; the cache then keeps only block tables and calls copy_block on
  // copy-on-write).
  virtual bool uses_host_pool() const { return true; }
  virtual void copy_block(int src, int dst) {}
};

// The CPU pass for either family; positions up to max_ctx (RoPE tables are built for it).
std::unique_ptr<ForwardPass> make_cpu_forward_pass(const ModelConfig& cfg, ForwardWeights w,
                                                   int max_ctx);

}  // namespace kiln

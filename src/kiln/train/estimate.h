// `kiln estimate`: memory per rank and time for training a model on a cluster under a layout.
// Sources: model states per ZeRO (Rajbhandari et al. 2020), activations per Korthikanti et al.
// 2022 "Reducing Activation Recomputation in Large Transformer Models", FLOPs per Narayanan et
// al. 2021 (6·N per token plus 12·L·T²·C per sequence for attention). docs/estimate.md derives
// each formula and reproduces the seed notes' 7B arithmetic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/model/config.h"
#include "kiln/model/precision.h"
#include "kiln/model/transformer.h"  // TrainOptions

namespace kiln {

struct EstimateInput {
  using Precision = kiln::Precision;  // model/precision.h: one definition for all of kiln
  using Recompute = kiln::Recompute;
  // Bytes per parameter of the model states: `standard` is mixed-precision Adam as in ZeRO
  // (2 weights + 2 grads + 12 fp32 master, m, v; fp32 training: 4 + 4 + 8); `seed` is the seed
  // notes' 2 weights + 2 grads + 4 Adam state = 8 (16-bit m and v, no fp32 master copy).
  enum class Accounting { standard, seed };

  ModelConfig model;
  int64_t params_override = 0;  // > 0: use this N (e.g. the seeds' nominal 7e9) for states, FLOPs

  int gpus = 1;
  double gpu_memory = 80.0 * (1ull << 30);  // bytes per GPU
  double peak_tflops = 989;                 // dense 16-bit peak per GPU (H100 SXM)

  int dp = 0, tp = 1, pp = 1;  // dp * tp * pp == gpus; dp 0 = gpus / (tp * pp)
  int zero = 0;                // 0..3: shard optimizer (1), + grads (2), + weights (3) over dp
  bool sequence_parallel = false;

  int micro_batch = 1;       // B sequences per micro-batch per data-parallel rank
  int seq = 2048;            // T
  int grad_accum = 1;        // micro-batches per step, used when global_batch == 0
  int64_t global_batch = 0;  // sequences per optimizer step; 0 = micro_batch * dp * grad_accum

  Precision precision = Precision::bf16;
  Recompute recompute = Recompute::selective;
  Accounting accounting = Accounting::standard;
  double tokens = 0;  // D, training tokens of the whole run; 0 = 20 * N (Chinchilla)
  double mfu = 0.4;   // model FLOPs utilization assumed for the time figures

  // kiln's own CPU trainer instead of a Megatron-style GPU job: fp32, one process, activations
  // exactly as TrainState keeps them (estimate_kiln_cpu_memory).
  bool kiln_cpu = false;
};

// Bytes per rank by category.
struct MemoryBytes {
  double weights = 0, grads = 0, optimizer = 0, activations = 0, logits = 0;
  double states() const { return weights + grads + optimizer; }
  double total() const { return states() + activations + logits; }
};

struct Estimate {
  EstimateInput in;         // the input, with dp / global batch / tokens resolved
  int64_t params = 0;         // N
  int64_t active_params = 0;  // a token's share of N: all of it, or for MoE the k experts it uses
  int64_t rank_params = 0;  // parameters one model-parallel rank holds (before ZeRO-3 sharding)
  double bytes_per_param[3] = {0, 0, 0};  // weights, grads, optimizer (before ZeRO sharding)
  MemoryBytes memory;                     // per rank, the most loaded pipeline stage
  bool fits = false;                      // memory.total() <= gpu_memory

  int micro_batches = 1;       // m, per data-parallel rank per step
  double tokens_per_step = 0;  // global_batch * seq
  double flops_6n = 0;         // 6·N·tokens per step (MoE: N active)
  double flops_attention = 0;  // 12·L·T²·C per sequence, per step
  double flops_recompute = 0;  // extra forward work recomputation adds, per step
  double bubble = 0;           // pipeline bubble fraction (p-1)/(m+p-1)
  double overhead = 0;         // tp / ZeRO-3 communication penalty, a fraction of compute
  double step_seconds = 0;
  int64_t steps = 0;           // ceil(D / tokens_per_step)
  double run_seconds = 0;      // steps * step_seconds
  double run_seconds_6nd = 0;  // 6·N·D / (gpus · peak · mfu): the seeds' formula

  double flops_per_step() const { return flops_6n + flops_attention + flops_recompute; }
};

// FLOPs of one training step over `seqs` sequences of T tokens (Narayanan et al. 2021): 6·N per
// token for the matmuls, forward and backward; the attention scores and their product with V,
// 12·L·T²·(H·D) per sequence; recomputation adds one forward of what it recomputes (full:
// 2·N per token + 4·L·T²·(H·D), selective: the attention). kiln estimate and kiln bench train
// both count with it.
struct StepFlops {
  double matmul = 0, attention = 0, recompute = 0;
  double total() const { return matmul + attention + recompute; }
};
StepFlops step_flops(const ModelConfig& c, double params, double seqs, double T,
                     Recompute recompute);

// A named Llama-shaped model: 125m, 350m, 1.3b (GPT-3 widths and depths, Llama blocks), 7b, 13b,
// 70b (Llama 2). Throws listing the names. `spec` may also be a config.json path.
ModelConfig estimate_model(const std::string& spec);

// Validates the input (layout divides the model, sizes positive) and computes every figure.
// Throws Error naming the value and the fix. A layout that does not fit is not an error: see fits.
Estimate estimate(const EstimateInput& in);

// Every layout of in.gpus (dp*tp*pp == gpus, tp dividing heads and kv heads, pp dividing layers,
// zero 0..3; sequence parallel whenever tp > 1) that fits in memory, fastest first (ties: less
// memory first). The global batch is held fixed (in.global_batch, or micro_batch * gpus *
// grad_accum when 0).
std::vector<Estimate> suggest(const EstimateInput& in);

// What would fit when nothing does: "needs at least 16 GPUs of 80 GiB (dp=2 tp=8 pp=1 zero=1)".
std::string what_would_fit(const EstimateInput& in);

// kiln's CPU fp32 training memory for (B, T), counted from TrainState's shapes: weights, grads,
// AdamW m and v (P floats each), the activations and scratch TrainState allocates, and the LM
// head's logits chunk. The oracle is tests/train/test_estimate.cpp (measured peak RSS).
MemoryBytes estimate_kiln_cpu_memory(const ModelConfig& cfg, int B, int T,
                                     const TrainOptions& opt = {});
inline size_t estimate_kiln_cpu_bytes(const ModelConfig& cfg, int B, int T,
                                      const TrainOptions& opt = {}) {
  return size_t(estimate_kiln_cpu_memory(cfg, B, T, opt).total());
}

// The readable report `kiln estimate` prints, and the same figures as one JSON object.
std::string estimate_table(const Estimate& e);
nlohmann::json estimate_json(const Estimate& e);
// One line per layout: dp tp pp zero, GiB per rank, seconds per step, days for the run.
std::string suggest_table(const std::vector<Estimate>& layouts);

// "80GiB", "40 GB", "512MiB", "1e9" -> bytes. Throws naming the text.
double parse_bytes(const std::string& text);
EstimateInput::Accounting parse_accounting(const std::string& s);
const char* to_string(EstimateInput::Accounting a);

}  // namespace kiln

// Picking the next token from logits. The pipeline, in order (Hugging Face's / vLLM's):
//   logit bias -> repetition penalty (prompt + output) -> presence / frequency penalties
//   (output) -> greedy argmax when temperature == 0, else temperature -> top-k -> top-p -> min-p
//   -> a draw from the sequence's own seeded generator.
// Every sequence owns its generator, so a seed reproduces regardless of what else is batched.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kiln/core/rng.h"
#include "kiln/infer/logits_constraint.h"

namespace kiln {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // keep p >= min_p * p_max; 0 = off
  float repetition_penalty = 1.0f;  // > 1 discourages tokens of prompt and output (HF's rule)
  float presence_penalty = 0.0f;    // subtracted once from tokens already generated (OpenAI)
  float frequency_penalty = 0.0f;   // subtracted per occurrence in the output (OpenAI)
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to the token's logit
  uint64_t seed = 0;
  int n = 1;                    // independent samples sharing the prompt's cache blocks
  int beams = 1;                // > 1: beam search (ignores temperature and filters)
  float length_penalty = 1.0f;  // beam score = sum log p / generated_len ^ length_penalty
  // >= 0: each sampled token's TokenEvent carries its log p and the `logprobs` most likely
  // tokens' (at most 20), from the raw model distribution (engine.h: TokenLogprob). -1 = off.
  int logprobs = -1;
  ConstraintFactory constraint;  // per-sequence token mask (grammar); empty = off; not with beams
};

// Throws Error naming the parameter if it is out of range. vocab_size > 0 also checks bias ids.
void validate(const SamplingParams& p, int vocab_size = 0);

// Token history a sequence's penalties need.
struct PenaltyState {
  std::vector<int32_t> prompt;                  // the prompt's token ids
  std::unordered_map<int32_t, int> out_counts;  // generated token -> occurrences
  void add_output(int32_t t) { ++out_counts[t]; }
};

// Applies logit bias and the three penalties to logits (V) in place.
void apply_penalties(float* logits, int V, const SamplingParams& p, const PenaltyState& st);

// The distribution temperature/top-k/top-p/min-p leave: (probability, token) pairs summing to 1
// (sorted by decreasing probability only when top-k or top-p needed a sort: a full sort of V
// costs more than the rest). What Sampler::sample draws from, in this order.
void filtered_distribution(const float* logits, int V, const SamplingParams& p,
                           std::vector<std::pair<double, int32_t>>& out);

class Sampler {
 public:
  // The generator is seeded from (p.seed, stream): stream tells n > 1 samples apart.
  explicit Sampler(const SamplingParams& p, uint64_t stream = 0);
  int32_t sample(const float* logits, int V);
  int32_t sample(const std::vector<float>& logits) {
    return sample(logits.data(), int(logits.size()));
  }

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<double, int32_t>> dist_;
};

}  // namespace kiln

// Picks the next token from logits: greedy (temperature 0), or temperature, then top-k, then
// top-p (nucleus) filtering, then a draw from a seeded generator.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/core/rng.h"

namespace kiln {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  uint64_t seed = 0;
};

// Throws Error naming the parameter if it is out of range.
void validate(const SamplingParams& p);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) { validate(p); }
  int32_t sample(const std::vector<float>& logits);

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

}  // namespace kiln

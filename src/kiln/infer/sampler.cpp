#include "kiln/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "kiln/core/error.h"

namespace kiln {

void validate(const SamplingParams& p, int V) {
  KILN_CHECK(p.temperature >= 0 && std::isfinite(p.temperature), "sampling",
             "temperature must be >= 0 (0 = greedy), got ", p.temperature);
  KILN_CHECK(p.top_k >= 0, "sampling", "top_k must be >= 0 (0 = off), got ", p.top_k);
  KILN_CHECK(p.top_p > 0 && p.top_p <= 1, "sampling", "top_p must be in (0, 1], got ", p.top_p);
  KILN_CHECK(p.min_p >= 0 && p.min_p <= 1, "sampling", "min_p must be in [0, 1], got ", p.min_p);
  KILN_CHECK(p.repetition_penalty > 0 && std::isfinite(p.repetition_penalty), "sampling",
             "repetition_penalty must be > 0 (1 = off), got ", p.repetition_penalty);
  KILN_CHECK(p.presence_penalty >= -2 && p.presence_penalty <= 2, "sampling",
             "presence_penalty must be in [-2, 2], got ", p.presence_penalty);
  KILN_CHECK(p.frequency_penalty >= -2 && p.frequency_penalty <= 2, "sampling",
             "frequency_penalty must be in [-2, 2], got ", p.frequency_penalty);
  KILN_CHECK(p.n >= 1 && p.n <= 256, "sampling", "n must be in [1, 256], got ", p.n);
  KILN_CHECK(p.beams >= 1 && p.beams <= 256, "sampling", "beams must be in [1, 256], got ",
             p.beams);
  KILN_CHECK(p.beams == 1 || p.n == 1, "sampling",
             "n > 1 and beams > 1 together are not supported: beam search already returns its ",
             "beams best first");
  KILN_CHECK(std::isfinite(p.length_penalty), "sampling", "length_penalty must be finite, got ",
             p.length_penalty);
  KILN_CHECK(p.logprobs >= -1 && p.logprobs <= 20, "sampling",
             "logprobs must be in [0, 20] (or -1 = off), got ", p.logprobs);
  for (const auto& [id, bias] : p.logit_bias) {
    KILN_CHECK(id >= 0 && (V <= 0 || id < V), "sampling", "logit_bias token id ", id,
               " is outside the vocabulary", V > 0 ? str(" of ", V) : std::string());
    KILN_CHECK(!std::isnan(bias), "sampling", "logit_bias for token ", id, " is NaN");
  }
}

void apply_penalties(float* logits, int V, const SamplingParams& p, const PenaltyState& st) {
  for (const auto& [id, bias] : p.logit_bias)
    if (id >= 0 && id < V) logits[id] += bias;
  if (p.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(st.prompt.begin(), st.prompt.end());
    for (const auto& kv : st.out_counts) seen.insert(kv.first);
    for (int32_t t : seen) {
      if (t < 0 || t >= V) continue;
      float& l = logits[t];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0 || p.frequency_penalty != 0) {
    for (const auto& [t, c] : st.out_counts)
      if (t >= 0 && t < V) logits[t] -= p.presence_penalty + p.frequency_penalty * float(c);
  }
}

void filtered_distribution(const float* logits, int V, const SamplingParams& p,
                           std::vector<std::pair<double, int32_t>>& out) {
  out.resize(V);
  const double inv_t = 1.0 / std::max(p.temperature, 1e-6f);
  double mx = -INFINITY;
  for (int i = 0; i < V; ++i) mx = std::max(mx, double(logits[i]) * inv_t);
  double sum = 0;
  for (int i = 0; i < V; ++i) {
    out[i] = {std::exp(double(logits[i]) * inv_t - mx), i};
    sum += out[i].first;
  }
  auto by_prob = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = out.size();
  // Sorting is only needed for top-k / top-p; min-p and plain temperature filter in place.
  if (p.top_k > 0 && p.top_k < V) {
    std::partial_sort(out.begin(), out.begin() + p.top_k, out.end(), by_prob);
    keep = p.top_k;
  } else if (p.top_p < 1) {
    std::sort(out.begin(), out.end(), by_prob);
  }
  out.resize(keep);
  sum = 0;
  for (const auto& e : out) sum += e.first;
  if (p.top_p < 1) {
    double cum = 0;
    size_t n = 0;
    while (n < out.size()) {
      cum += out[n].first / sum;
      ++n;
      if (cum >= p.top_p) break;
    }
    out.resize(n);
  }
  if (p.min_p > 0) {
    double pmax = 0;
    for (const auto& e : out) pmax = std::max(pmax, e.first);
    const double cut = p.min_p * pmax;
    out.erase(std::remove_if(out.begin(), out.end(), [&](const auto& e) { return e.first < cut; }),
              out.end());
  }
  sum = 0;
  for (const auto& e : out) sum += e.first;
  for (auto& e : out) e.first /= sum;
}

Sampler::Sampler(const SamplingParams& p, uint64_t stream) : p_(p) {
  validate(p);
  // Distinct, well-mixed streams per sample index (stream 0 is the plain seed).
  rng_.reseed(p.seed ^ (stream * 0x9e3779b97f4a7c15ull));
}

int32_t Sampler::sample(const float* logits, int V) {
  if (p_.temperature == 0) return int32_t(std::max_element(logits, logits + V) - logits);
  filtered_distribution(logits, V, p_, dist_);
  const double r = rng_.uniform_double();
  double acc = 0;
  for (const auto& [prob, id] : dist_) {
    acc += prob;
    if (r < acc) return id;
  }
  return dist_.back().second;
}

}  // namespace kiln

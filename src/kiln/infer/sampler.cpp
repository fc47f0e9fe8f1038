#include "kiln/infer/sampler.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"

namespace kiln {

void validate(const SamplingParams& p) {
  KILN_CHECK(p.temperature >= 0 && std::isfinite(p.temperature), "sampling",
             "temperature must be >= 0 (0 = greedy), got ", p.temperature);
  KILN_CHECK(p.top_k >= 0, "sampling", "top_k must be >= 0 (0 = off), got ", p.top_k);
  KILN_CHECK(p.top_p > 0 && p.top_p <= 1, "sampling", "top_p must be in (0, 1], got ", p.top_p);
}

int32_t Sampler::sample(const std::vector<float>& logits) {
  const int V = int(logits.size());
  if (p_.temperature == 0) {
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  cand_.resize(V);
  for (int i = 0; i < V; ++i) cand_[i] = {logits[i] / p_.temperature, i};
  // Sort descending by logit (ties by id, so the order never depends on the sort's stability).
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int keep = V;
  if (p_.top_k > 0 && p_.top_k < V) {
    std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), by_logit);
    keep = p_.top_k;
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  const float mx = cand_[0].first;
  double sum = 0;
  for (int i = 0; i < keep; ++i) sum += (cand_[i].first = std::exp(cand_[i].first - mx));
  if (p_.top_p < 1) {
    double cum = 0;
    int n = 0;
    while (n < keep) {
      cum += cand_[n].first / sum;
      ++n;
      if (cum >= p_.top_p) break;
    }
    keep = n;
    sum = 0;
    for (int i = 0; i < keep; ++i) sum += cand_[i].first;
  }
  double r = rng_.uniform_double() * sum, acc = 0;
  for (int i = 0; i < keep; ++i) {
    acc += cand_[i].first;
    if (r < acc) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace kiln

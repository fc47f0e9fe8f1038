// Samplers against exact distributions: for fixed logits, each filter's target distribution is
// computed here from its definition in double precision, then 40,000 draws with a fixed seed are
// compared by Pearson's chi-square. The threshold is the 0.999 quantile of chi-square with
// (support - 1) degrees of freedom, so a correct sampler fails with probability 1e-3 for a given
// seed (and the seed is fixed, so the test is deterministic). Draws outside the support fail.
#include "kiln/infer/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "kiln/core/error.h"

namespace kiln {
namespace {

const std::vector<float> kLogits = {2.0f, 1.5f, 0.3f, -0.2f, 1.1f, -1.0f, 0.8f, 0.0f, -2.5f, 1.6f};

// The truth, written from the definitions: softmax(l / T); top-k keeps the k largest; top-p the
// smallest prefix (by decreasing p) whose mass reaches p; min-p drops p_i < min_p * p_max.
std::map<int, double> exact(const SamplingParams& sp) {
  const int V = int(kLogits.size());
  std::vector<double> p(V);
  double s = 0;
  for (int i = 0; i < V; ++i) s += (p[i] = std::exp(double(kLogits[i]) / sp.temperature));
  for (double& x : p) x /= s;
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  std::vector<int> keep = order;
  if (sp.top_k > 0) keep.resize(std::min<int>(sp.top_k, V));
  if (sp.top_p < 1) {
    double mass = 0, cum = 0;
    for (int i : keep) mass += p[i];
    size_t n = 0;
    while (n < keep.size()) {
      cum += p[keep[n++]] / mass;
      if (cum >= sp.top_p) break;
    }
    keep.resize(n);
  }
  if (sp.min_p > 0) {
    const double pmax = p[keep[0]];
    keep.erase(
        std::remove_if(keep.begin(), keep.end(), [&](int i) { return p[i] < sp.min_p * pmax; }),
        keep.end());
  }
  std::map<int, double> out;
  double mass = 0;
  for (int i : keep) mass += p[i];
  for (int i : keep) out[i] = p[i] / mass;
  return out;
}

const double kChi2_999[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32, 26.12, 27.88};

void check_distribution(const SamplingParams& sp, const char* what) {
  auto want = exact(sp);
  Sampler s(sp);
  const int draws = 40000;
  std::map<int, int> got;
  for (int i = 0; i < draws; ++i) ++got[s.sample(kLogits)];
  for (const auto& [tok, n] : got)
    ASSERT_TRUE(want.count(tok)) << what << ": drew token " << tok << " outside the support";
  double chi2 = 0;
  for (const auto& [tok, p] : want) {
    const double e = p * draws, o = got.count(tok) ? got[tok] : 0;
    chi2 += (o - e) * (o - e) / e;
  }
  const int df = int(want.size()) - 1;
  if (df == 0) return;
  EXPECT_LT(chi2, kChi2_999[df]) << what << ": chi-square " << chi2 << " with " << df << " dof";
  // The sampler's own distribution equals the truth to rounding.
  std::vector<std::pair<double, int32_t>> dist;
  filtered_distribution(kLogits.data(), int(kLogits.size()), sp, dist);
  ASSERT_EQ(dist.size(), want.size()) << what;
  for (const auto& [p, tok] : dist) EXPECT_NEAR(p, want[tok], 1e-12) << what << " token " << tok;
}

TEST(Sampler, DistributionsMatchTheDefinitions) {
  SamplingParams sp;
  sp.seed = 11;
  check_distribution(sp, "temperature 1");
  sp.temperature = 0.6f;
  check_distribution(sp, "temperature 0.6");
  sp.temperature = 1.7f;
  check_distribution(sp, "temperature 1.7");
  sp = {};
  sp.top_k = 4;
  check_distribution(sp, "top-k 4");
  sp = {};
  sp.top_p = 0.7f;
  check_distribution(sp, "top-p 0.7");
  sp = {};
  sp.min_p = 0.3f;
  check_distribution(sp, "min-p 0.3");
  sp = {};
  sp.temperature = 0.8f;
  sp.top_k = 6;
  sp.top_p = 0.9f;
  sp.min_p = 0.1f;
  sp.seed = 5;
  check_distribution(sp, "all filters");
}

TEST(Sampler, GreedyAndSeeds) {
  SamplingParams sp;
  sp.temperature = 0;
  EXPECT_EQ(Sampler(sp).sample(kLogits), 0);
  sp.temperature = 1;
  sp.seed = 42;
  Sampler a(sp), b(sp), c(sp, 1);
  std::vector<int> ra, rb, rc;
  for (int i = 0; i < 64; ++i) {
    ra.push_back(a.sample(kLogits));
    rb.push_back(b.sample(kLogits));
    rc.push_back(c.sample(kLogits));
  }
  EXPECT_EQ(ra, rb);  // same seed, same stream: same draws
  EXPECT_NE(ra, rc);  // another stream (sample index) differs
}

TEST(Sampler, PenaltiesAndBias) {
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f};
  SamplingParams sp;
  sp.repetition_penalty = 2.0f;
  sp.presence_penalty = 0.5f;
  sp.frequency_penalty = 0.25f;
  sp.logit_bias = {{2, 1.0f}};
  PenaltyState st;
  st.prompt = {0, 1};
  st.add_output(1);
  st.add_output(1);
  st.add_output(3);
  apply_penalties(l.data(), 4, sp, st);
  EXPECT_FLOAT_EQ(l[0], 1.0f);                      // prompt, positive: / 2
  EXPECT_FLOAT_EQ(l[1], -2.0f - 0.5f - 0.25f * 2);  // * 2, then presence + 2 x frequency
  EXPECT_FLOAT_EQ(l[2], 1.5f);                      // bias only
  EXPECT_FLOAT_EQ(l[3], 1.5f - 0.5f - 0.25f);       // output once
}

TEST(Sampler, OutOfRangeParametersAreErrors) {
  auto bad = [](auto edit) {
    SamplingParams sp;
    edit(sp);
    EXPECT_THROW(validate(sp, 10), Error);
  };
  bad([](SamplingParams& p) { p.temperature = -1; });
  bad([](SamplingParams& p) { p.temperature = NAN; });
  bad([](SamplingParams& p) { p.top_k = -2; });
  bad([](SamplingParams& p) { p.top_p = 0; });
  bad([](SamplingParams& p) { p.top_p = 1.5f; });
  bad([](SamplingParams& p) { p.min_p = -0.1f; });
  bad([](SamplingParams& p) { p.repetition_penalty = 0; });
  bad([](SamplingParams& p) { p.presence_penalty = 3; });
  bad([](SamplingParams& p) { p.frequency_penalty = -2.5f; });
  bad([](SamplingParams& p) { p.n = 0; });
  bad([](SamplingParams& p) { p.beams = 0; });
  bad([](SamplingParams& p) { p.n = 2, p.beams = 2; });
  bad([](SamplingParams& p) { p.logit_bias = {{10, 1.0f}}; });
  try {
    SamplingParams sp;
    sp.top_p = 2;
    validate(sp);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln

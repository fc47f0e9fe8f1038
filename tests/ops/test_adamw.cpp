// AdamW: ref and cpu against a double-precision transcription of torch.optim.AdamW over several
// steps, cpu vs ref over odd sizes, and bit-exact determinism across thread counts.
//
// Tolerance (kU = 2^-24). Each fp32 step rounds a handful of times: m and v err by a few kU of
// |m| + |g| and |v| + g^2; the update lr/bc1 * m/(sqrt(v)/sqrt(bc2) + eps) by ~8 kU of its own
// size u; the decayed parameter by 2 kU |p|. Errors add over steps, and an error in m or v
// carries into later updates scaled by beta < 1, so after S steps
//   |p - p_double| <= S (4 kU |p| + 16 kU max u),  |m - m_double| <= S 4 kU max(|m|, |g|), ...
#include "kiln/ops/adamw.h"

#include <cmath>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::kU;
using test::random_normal;
using test::random_vector;

// torch/optim/adamw.py (_single_tensor_adamw) in double:
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
struct AdamWDouble {
  std::vector<double> p, m, v;
  double max_update = 0.0;  // the largest |lr/bc1 * m/denom| seen, for the tolerance
  void step(const std::vector<float>& grad, const AdamWParams& hp) {
    const double b1 = hp.beta1, b2 = hp.beta2, lr = hp.lr;
    const double bc1 = 1.0 - std::pow(b1, double(hp.step)),
                 bc2 = 1.0 - std::pow(b2, double(hp.step));
    for (size_t i = 0; i < p.size(); ++i) {
      const double g = grad[i];
      p[i] *= 1.0 - lr * hp.weight_decay;
      m[i] = b1 * m[i] + (1.0 - b1) * g;
      v[i] = b2 * v[i] + (1.0 - b2) * g * g;
      const double update = lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + hp.eps);
      p[i] -= update;
      max_update = std::max(max_update, std::fabs(update));
    }
  }
};

using AdamWFn = void (*)(float*, const float*, float*, float*, int64_t, const AdamWParams&);

void check_against_double(AdamWFn adamw, AdamWParams hp, int64_t n, int steps, uint64_t seed) {
  auto p = random_normal(n, seed);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  AdamWDouble want{test::to_double(p), std::vector<double>(n), std::vector<double>(n)};
  double max_g = 0.0, max_g2 = 0.0;
  for (int s = 1; s <= steps; ++s) {
    // Gradients of changing scale, some exactly zero (v stays 0 there: eps alone guards 0/0).
    auto g = random_normal(n, seed + 100 * s, 0.1f * s);
    for (int64_t i = 0; i < n; i += 5) g[i] = 0.0f;
    hp.step = s;
    adamw(p.data(), g.data(), m.data(), v.data(), n, hp);
    want.step(g, hp);
    max_g = std::max(max_g, test::max_abs(g));
    max_g2 = std::max(max_g2, max_g * max_g);
  }
  const double S = steps;
  EXPECT_TRUE(test::all_close(p, want.p, S * 4 * kU, S * 16 * kU * want.max_update))
      << "param n=" << n << " steps=" << steps;
  EXPECT_TRUE(test::all_close(m, want.m, S * 4 * kU, S * 4 * kU * max_g)) << "m n=" << n;
  EXPECT_TRUE(test::all_close(v, want.v, S * 4 * kU, S * 4 * kU * max_g2)) << "v n=" << n;
}

TEST(AdamW, MatchesTorchFormulaInDouble) {
  AdamWParams gpt{.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
  AdamWParams torch_default{
      .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
  AdamWParams big_eps{
      .lr = 3e-4f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-3f, .weight_decay = 0.0f};
  uint64_t seed = 1;
  for (const auto& hp : {gpt, torch_default, big_eps})
    for (int64_t n : {1, 7, 13, 31, 97, 1000}) {
      check_against_double(ref::adamw_step, hp, n, 10, ++seed);
      check_against_double(cpu::adamw_step, hp, n, 10, ++seed);
    }
}

TEST(AdamW, CpuMatchesRefOneStep) {
  const AdamWParams hp{.lr = 1e-2f, .weight_decay = 0.1f, .step = 3};
  uint64_t seed = 50;
  for (int64_t n : {1, 7, 13, 16, 31, 97, 1000003}) {
    auto p = random_normal(n, ++seed), g = random_normal(n, ++seed);
    auto m = random_normal(n, ++seed, 0.1f), v = random_vector(n, ++seed, 0.0f, 0.01f);
    auto p_ref = p, m_ref = m, v_ref = v;
    ref::adamw_step(p_ref.data(), g.data(), m_ref.data(), v_ref.data(), n, hp);
    cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, hp);
    // Same formula; only the fusing of multiply-adds may differ: a few kU of each term.
    const double max_update = 1e-2 / (1 - 0.9 * 0.9 * 0.9) * 4;  // |mhat / vhat^.5| stays O(1)
    EXPECT_TRUE(test::all_close(p, p_ref, 4 * kU, 16 * kU * max_update)) << "n=" << n;
    EXPECT_TRUE(test::all_close(m, m_ref, 4 * kU, 4 * kU * test::max_abs(g))) << "n=" << n;
    EXPECT_TRUE(
        test::all_close(v, v_ref, 4 * kU, 4 * kU * 0.05 * test::max_abs(g) * test::max_abs(g)))
        << "n=" << n;
  }
}

// The optimizer state must resume bit for bit, and ranges split differently by thread count.
TEST(AdamW, CpuIndependentOfThreadCount) {
  const int64_t n = 1000003;
  auto g = random_normal(n, 2);
  std::vector<std::vector<float>> res[3];
  for (int t : {1, 2, 3}) {
    test::ThreadCount tc(t);
    auto p = random_normal(n, 1);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    for (int s = 1; s <= 3; ++s)
      cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n,
                      {.lr = 1e-3f, .weight_decay = 0.1f, .step = s});
    res[0].push_back(p), res[1].push_back(m), res[2].push_back(v);
  }
  for (auto& r : res) {
    EXPECT_TRUE(test::bit_equal(r[0], r[1]));
    EXPECT_TRUE(test::bit_equal(r[0], r[2]));
  }
}

}  // namespace
}  // namespace kiln::ops

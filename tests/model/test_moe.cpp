// Mixture-of-Experts routing (model/moe.h) on hand-made logits, and the MoE layer in bf16 against
// fp32. The whole layer's forward and backward are checked against PyTorch in
// tests/train/test_parity.cpp (Parity.Mixtral*).
#include "kiln/model/moe.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kiln/core/rng.h"
#include "kiln/model/transformer.h"

namespace kiln {
namespace {

TEST(MoeRouting, TopKRenormalisedAndPermutedByExpert) {
  // 3 tokens, 4 experts, k = 2.
  const float logits[] = {0, 1, 2, 3,   //
                          3, 2, 1, 0,   //
                          0, 0, 5, 0};  // near one-hot on expert 2, then the lowest index
  MoeRouting r;
  moe_route(r, logits, 3, 4, 2, 0.0f);
  EXPECT_EQ(r.expert, (std::vector<int>{3, 2, 0, 1, 2, 0}));
  const double e = std::exp(1.0);
  EXPECT_NEAR(r.weight[0], e / (e + 1), 1e-6);
  EXPECT_NEAR(r.weight[1], 1 / (e + 1), 1e-6);
  EXPECT_NEAR(r.weight[4] + r.weight[5], 1.0, 1e-6);
  EXPECT_EQ(r.selected, (std::vector<int>{2, 1, 2, 1}));
  EXPECT_EQ(r.offsets, (std::vector<int>{0, 2, 3, 5, 6}));
  // Expert by expert, tokens in order: pair t*k + j.
  EXPECT_EQ(r.source, (std::vector<int>{2, 5, 3, 1, 4, 0}));
  EXPECT_EQ(r.dropped, 0);
  double sum = 0;
  for (int i = 0; i < 4; ++i) sum += r.probs[i];
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_NEAR(r.lse[2], 5 + std::log(1 + 3 * std::exp(-5.0)), 1e-5);
}

TEST(MoeRouting, CapacityKeepsEachExpertsFirstTokens) {
  // Every token prefers expert 0 then 1: with capacity ceil(1.0 * 4 * 2 / 4) = 2 each expert
  // keeps tokens 0 and 1 and drops tokens 2 and 3.
  std::vector<float> logits;
  for (int t = 0; t < 4; ++t) logits.insert(logits.end(), {2, 1, 0, 0});
  MoeRouting r;
  EXPECT_EQ(moe_capacity(4, 4, 2, 1.0f), 2);
  moe_route(r, logits.data(), 4, 4, 2, 1.0f);
  EXPECT_EQ(r.offsets, (std::vector<int>{0, 2, 4, 4, 4}));
  EXPECT_EQ(r.source, (std::vector<int>{0, 2, 1, 3}));
  EXPECT_EQ(r.dropped, 4);
  EXPECT_EQ(r.selected, (std::vector<int>{4, 4, 0, 0}));  // counted before the drop
}

TEST(MoeStats, SwitchLossIsKAtBalanceAndGrowsWithImbalance) {
  MoeStats s;
  s.reset(4);
  MoeRouting r;
  // Uniform probabilities, each expert chosen by 4 of the 16 (token, slot) pairs.
  r.N = 8, r.E = 4, r.k = 2;
  r.probs.assign(32, 0.25f);
  r.lse.assign(8, std::log(4.0f));
  r.selected = {4, 4, 4, 4};
  s.add(r);
  EXPECT_NEAR(s.aux(), 2.0, 1e-9);
  EXPECT_NEAR(s.z(), std::log(4.0) * std::log(4.0), 1e-6);
  s.reset(4);
  r.selected = {8, 8, 0, 0};
  for (int t = 0; t < 8; ++t) {
    r.probs[t * 4 + 0] = r.probs[t * 4 + 1] = 0.5f;
    r.probs[t * 4 + 2] = r.probs[t * 4 + 3] = 0.0f;
  }
  s.add(r);
  EXPECT_NEAR(s.aux(), 4.0, 1e-9);
  const std::vector<double> halves = {0.5, 0.5, 0.0, 0.0};
  EXPECT_EQ(s.fractions(), halves);
}

// bf16 rounds the experts' GEMM inputs (the router stays fp32): the loss within 1% of fp32's and
// every gradient pointing the same way.
TEST(MoeLayer, Bf16TracksFp32) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.vocab_size = 97;
  c.hidden = 64;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.intermediate = 64;
  c.max_positions = 64;
  c.moe.experts = 8;
  c.moe.experts_per_tok = 2;
  c.moe.output_router_logits = true;
  Model m(c);
  m.init_weights(3);
  const int B = 2, T = 32;
  std::vector<int> ids(B * T), tg(B * T);
  Rng rng(6);
  for (int i = 0; i < B * T; ++i) {
    ids[i] = int(rng.below(c.vocab_size));
    tg[i] = int(rng.below(c.vocab_size));
  }
  std::vector<float> g32(m.num_params(), 0.0f), g16(m.num_params(), 0.0f);
  TrainState fp32(m, B, T, {Precision::fp32});
  TrainState bf16(m, B, T, {Precision::bf16});
  const double l32 = fp32.step(m, ids.data(), tg.data(), g32.data());
  const double l16 = bf16.step(m, ids.data(), tg.data(), g16.data());
  EXPECT_NEAR(l16, l32, 0.01 * l32);
  EXPECT_EQ(bf16.moe_stats()->selected, fp32.moe_stats()->selected) << "the routing moved";
  for (const ParamInfo& p : m.params()) {
    double dot = 0, a = 0, b = 0;
    for (int64_t i = 0; i < p.numel(); ++i) {
      dot += double(g32[p.offset + i]) * g16[p.offset + i];
      a += double(g32[p.offset + i]) * g32[p.offset + i];
      b += double(g16[p.offset + i]) * g16[p.offset + i];
    }
    if (a == 0) continue;  // an expert no token reached
    EXPECT_GT(dot / std::sqrt(a * b), 0.99) << p.name;
  }
}

}  // namespace
}  // namespace kiln

// Activation recomputation must not change a single bit: the recomputed activations come from
// the same deterministic kernels on the same inputs. Losses and every gradient are compared with
// memcmp across none / selective / full / full on the first two layers only, in fp32 and bf16
// (dense, and Mixtral with and without a capacity factor: the recomputed routing is the same), and
// the memory kept must shrink in that order.
#include <gtest/gtest.h>

#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/transformer.h"

namespace kiln {
namespace {

// experts > 0: Mixtral (top-2), with capacity_factor > 0 dropping pairs.
ModelConfig config(Arch arch, int experts = 0, float capacity_factor = 0) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 97;
  c.hidden = 48;
  c.layers = 3;
  c.heads = 6;
  c.kv_heads = arch == Arch::llama ? 2 : 6;
  c.head_dim = 8;
  c.intermediate = 80;
  c.max_positions = 64;
  c.tie_embeddings = arch == Arch::gpt2;
  c.moe.experts = experts;
  c.moe.experts_per_tok = 2;
  c.moe.capacity_factor = capacity_factor;
  c.moe.output_router_logits = true;
  c.moe.z_loss_coef = 0.001f;
  return c;
}

struct Result {
  double loss;
  std::vector<float> grads;
  size_t bytes;
};

Result run(const Model& m, TrainOptions opt) {
  const int B = 3, T = 29;
  TrainState ts(m, B, T, opt);
  std::vector<int> ids(B * T), tg(B * T);
  Rng rng(4);
  for (int i = 0; i < B * T; ++i) {
    ids[i] = int(rng.below(m.config().vocab_size));
    tg[i] = i % 11 == 0 ? -1 : int(rng.below(m.config().vocab_size));
  }
  Result r{0, std::vector<float>(m.num_params(), 0.0f), ts.bytes()};
  r.loss = ts.step(m, ids.data(), tg.data(), r.grads.data());
  return r;
}

TEST(Recompute, BitIdenticalLossAndGradientsLessMemory) {
  for (const ModelConfig& c : {config(Arch::llama), config(Arch::gpt2), config(Arch::llama, 4),
                               config(Arch::llama, 4, 1.0f)}) {
    Model m(c);
    m.init_weights(8);
    for (Precision p : {Precision::fp32, Precision::bf16}) {
      Result none = run(m, {p, Recompute::none, -1});
      Result sel = run(m, {p, Recompute::selective, -1});
      Result full = run(m, {p, Recompute::full, -1});
      // Two of three layers: one layer of scratch serves both, so memory falls (with one of
      // three it would only break even).
      Result first = run(m, {p, Recompute::full, 2});
      for (const Result* r : {&sel, &full, &first}) {
        EXPECT_EQ(std::memcmp(&r->loss, &none.loss, sizeof(double)), 0) << name_of(p);
        EXPECT_EQ(std::memcmp(r->grads.data(), none.grads.data(), none.grads.size() * 4), 0)
            << name_of(p);
      }
      EXPECT_LT(sel.bytes, none.bytes);
      EXPECT_LT(full.bytes, sel.bytes);
      EXPECT_LT(first.bytes, none.bytes);
      EXPECT_GT(first.bytes, full.bytes);
    }
  }
}

TEST(Recompute, LayerCountOutOfRangeIsAnError) {
  Model m(config(Arch::llama));
  EXPECT_THROW(TrainState(m, 1, 8, {Precision::fp32, Recompute::full, 4}), Error);
}

}  // namespace
}  // namespace kiln

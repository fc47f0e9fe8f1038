// Packed training rows (TrainState::set_positions): several examples in one row, positions
// restarting at 0, attention confined to each example. Oracle: the same examples run one by one
// (each its own TrainState of its own length). The packed batch's mean loss and gradient equal
// the token-weighted mean of theirs (fp32 summation order apart), for Llama (RoPE) and GPT-2
// (learned positions), with and without recomputation, and under LoRA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/lora.h"
#include "kiln/model/transformer.h"
#include "lora_test_util.h"
#include "test_util.h"

namespace kiln {
namespace {

struct Example {
  std::vector<int32_t> ids, targets;  // one example's inputs and targets (-1: not counted)
};

std::vector<Example> examples(int V) {
  Rng rng(3);
  std::vector<Example> ex;
  for (int n : {9, 17, 5, 20, 7}) {
    Example e;
    for (int t = 0; t < n; ++t) {
      e.ids.push_back(int32_t(rng.below(V)));
      e.targets.push_back(t < n / 3 ? -1 : int32_t(rng.below(V)));  // a prompt, then the reply
    }
    ex.push_back(e);
  }
  return ex;
}

double relative_error(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i)
    num += (a[i] - b[i]) * double(a[i] - b[i]), den += b[i] * double(b[i]);
  return std::sqrt(num / std::max(den, 1e-30));
}

void check_packed(const std::string& config, Recompute rc, bool lora) {
  Model m(load_model_config(test::source_dir() + "/configs/models/" + config));
  m.init_weights(5);
  const int V = m.config().vocab_size, B = 2, T = 32;
  const std::vector<Example> ex = examples(V);
  std::unique_ptr<LoraWeights> ad;
  if (lora) {
    LoraConfig lc;
    lc.r = 4;
    lc.target_modules = {"all-linear"};
    ad = std::make_unique<LoraWeights>(m, lc);
    test::init_with_random_b(*ad, 1, 0.1f);
  }
  TrainOptions opt;
  opt.recompute = rc;
  opt.lora = ad.get();
  const int64_t G = lora ? ad->num_params() : m.num_params();
  // Rows: examples 0 and 1 then 6 padding tokens; examples 2, 3 and 4 exactly.
  std::vector<int32_t> ids(B * T, 0), targets(B * T, -1), pos(B * T);
  int row = 0, at = 0;
  for (size_t e = 0; e < ex.size(); ++e) {
    if (e == 2) row = 1, at = 0;
    for (size_t t = 0; t < ex[e].ids.size(); ++t, ++at) {
      ids[row * T + at] = ex[e].ids[t];
      targets[row * T + at] = ex[e].targets[t];
      pos[row * T + at] = int(t);
    }
  }
  for (int t = 26; t < 32; ++t) pos[t] = t - 26;  // the padding: a sequence of its own
  TrainState packed(m, B, T, opt);
  packed.set_positions(pos.data());
  std::vector<float> gp(G, 0.0f);
  const double loss = packed.step(m, ids.data(), targets.data(), gp.data());

  int64_t total = 0;
  for (const Example& e : ex)
    for (int32_t t : e.targets) total += t >= 0;
  std::vector<float> g1(G, 0.0f);
  double sum = 0;
  for (const Example& e : ex) {
    int64_t n = 0;
    for (int32_t t : e.targets) n += t >= 0;
    TrainState one(m, 1, int(e.ids.size()), opt);
    sum += double(n) *
           one.step(m, e.ids.data(), e.targets.data(), g1.data(), float(double(n) / double(total)));
  }
  EXPECT_NEAR(loss, sum / double(total), 1e-5 * loss);
  EXPECT_LT(relative_error(gp.data(), g1.data(), G), 1e-4);
  // Without the positions the rows would be one sequence each: a different loss.
  TrainState unpacked(m, B, T, opt);
  EXPECT_GT(std::fabs(unpacked.step(m, ids.data(), targets.data(), nullptr) - loss), 1e-4);
}

TEST(Packing, LlamaPackedBatchEqualsItsExamplesOneByOne) {
  check_packed("llama-tiny.json", Recompute::none, false);
}

TEST(Packing, Gpt2LearnedPositionsPackedEqualsOneByOne) {
  check_packed("gpt2-tiny.json", Recompute::none, false);
}

TEST(Packing, WithRecomputationAndLora) {
  check_packed("llama-tiny.json", Recompute::selective, true);
  check_packed("llama-tiny.json", Recompute::full, false);
}

TEST(Packing, PositionsMustCountUp) {
  Model m(load_model_config(test::source_dir() + "/configs/models/llama-tiny.json"));
  TrainState ts(m, 1, 4);
  const int bad[] = {0, 1, 1, 2};
  EXPECT_THROW(ts.set_positions(bad), Error);
}

}  // namespace
}  // namespace kiln

// Many LoRA adapters in one batch (EngineAdapter, ForwardBatch::adapter): requests of two adapters
// and of the bare base decoded together give, each, the greedy tokens and logits of its merged
// model (W + s B A, model/lora.h) served alone, for both families and with prompts long enough to
// take the tiled prefill path; and the prefix cache never hands one adapter's K/V to another.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "infer_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/infer/engine.h"
#include "kiln/model/lora.h"
#include "lora_test_util.h"

namespace kiln {
namespace {

using test::make_model;

// An adapter on every linear layer with B random (PEFT starts it at 0: no change to test).
std::shared_ptr<LoraWeights> random_adapter(const Model& base, int r, uint64_t seed) {
  LoraConfig lc;
  lc.r = r;
  lc.alpha = float(2 * r);
  lc.target_modules = {"all-linear"};
  auto ad = std::make_shared<LoraWeights>(base, lc);
  test::init_with_random_b(*ad, seed, 0.3f);
  return ad;
}

std::unique_ptr<Model> merged(const Model& base, const LoraWeights* ad) {
  auto m = std::make_unique<Model>(base.config());
  std::memcpy(m->weights().raw(), base.weights().raw(), base.weights().nbytes());
  if (ad) merge_lora(*m, ad->adapter());
  return m;
}

struct Out {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;
  int cached = 0;
};

// Every (prompt, adapter) as one request of one engine over `base`, all in flight together.
std::vector<Out> run(const Model& base, const std::vector<std::vector<int32_t>>& prompts,
                     const std::vector<EngineAdapter>& adapters, int max_tokens) {
  EngineOptions opts;
  opts.return_logits = true;
  opts.max_running = int(prompts.size());
  Engine eng(base, opts);
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<Out> out(prompts.size());
  int64_t first = -1;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const int64_t id =
        eng.add_request(prompts[i], greedy, test::stop_after(max_tokens), adapters[i]);
    if (first < 0) first = id;
  }
  while (!eng.idle())
    for (const TokenEvent& e : eng.step()) {
      Out& o = out[e.request - first];
      for (int32_t t : e.tokens) o.tokens.push_back(t);
      if (!e.logits.empty()) o.logits.push_back(e.logits);
    }
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto r = eng.take_result(first + int64_t(i));
    if (r) out[i].cached = r->cached_prompt_tokens;
  }
  return out;
}

void check_mixed_batch(const ModelConfig& cfg) {
  auto base = make_model(cfg);
  auto a1 = random_adapter(*base, 4, 11), a2 = random_adapter(*base, 8, 21);
  Rng rng(5);
  std::vector<std::vector<int32_t>> prompts;
  for (int len : {5, 20, 9, 33, 3, 17}) {  // 20, 33, 17: fresh prefill through the tiled kernel
    std::vector<int32_t> p(len);
    for (auto& t : p) t = int32_t(rng.below(cfg.vocab_size));
    prompts.push_back(p);
  }
  const std::vector<EngineAdapter> who = {{a1, 1}, {}, {a2, 2}, {a1, 1}, {a2, 2}, {}};
  const std::vector<Out> together = run(*base, prompts, who, 10);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto m = merged(*base, who[i].weights.get());
    const std::vector<Out> alone = run(*m, {prompts[i]}, {{}}, 10);
    EXPECT_EQ(together[i].tokens, alone[0].tokens) << "request " << i;
    ASSERT_EQ(together[i].logits.size(), alone[0].logits.size());
    for (size_t s = 0; s < alone[0].logits.size(); ++s) {
      float scale = 0, worst = 0;
      for (size_t v = 0; v < alone[0].logits[s].size(); ++v) {
        scale = std::max(scale, std::fabs(alone[0].logits[s][v]));
        worst = std::max(worst, std::fabs(alone[0].logits[s][v] - together[i].logits[s][v]));
      }
      EXPECT_LE(worst, 1e-4 * scale) << "request " << i << " step " << s;
    }
  }
}

TEST(EngineLora, LlamaAdaptersAndBaseInOneBatchMatchTheirMergedModels) {
  check_mixed_batch(test::tiny_llama());
}

TEST(EngineLora, Gpt2AdaptersAndBaseInOneBatchMatchTheirMergedModels) {
  check_mixed_batch(test::tiny_gpt2());
}

TEST(EngineLora, PrefixCacheKeepsEachAdaptersBlocksApart) {
  auto base = make_model(test::tiny_llama());
  auto a1 = random_adapter(*base, 4, 11);
  Rng rng(6);
  std::vector<int32_t> p(40);
  for (auto& t : p) t = int32_t(rng.below(64));
  EngineOptions opts;
  Engine eng(*base, opts);
  SamplingParams greedy;
  greedy.temperature = 0;
  auto finish = [&](EngineAdapter a) {
    eng.add_request(p, greedy, test::stop_after(4), std::move(a));
    return eng.run_all().at(0);
  };
  EXPECT_EQ(finish({}).cached_prompt_tokens, 0);
  EXPECT_EQ(finish({a1, 1}).cached_prompt_tokens, 0);   // the base's blocks are not its
  EXPECT_EQ(finish({a1, 1}).cached_prompt_tokens, 32);  // its own are
  EXPECT_EQ(finish({}).cached_prompt_tokens, 32);
  EXPECT_THROW(eng.add_request(p, greedy, test::stop_after(4), {a1, 0}), Error);
}

}  // namespace
}  // namespace kiln

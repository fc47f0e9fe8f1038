// Pipeline stages: the layer split, each stage model's parameters (HF names, global layer
// indices), and the chain of stages run in one process (forward_stage's output into the next
// stage, backward_stage's input gradient into the previous one) against the whole model's step.
// The stages run the same kernels on the same numbers in the same order, so the loss and every
// gradient match bit for bit, except a tied embedding's, which sums its two stages' parts in
// another order (compared to 1e-6 of its largest magnitude).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/transformer.h"

namespace kiln {
namespace {

ModelConfig config(Arch arch, int layers, bool tied) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 97;
  c.hidden = 48;
  c.layers = layers;
  c.heads = 6;
  c.kv_heads = arch == Arch::llama ? 2 : 6;
  c.head_dim = 8;
  c.intermediate = 80;
  c.max_positions = 64;
  c.tie_embeddings = tied;
  return c;
}

TEST(PipelineStage, SplitsLayersRemainderFirst) {
  ModelConfig c = config(Arch::llama, 10, false);
  const int first[] = {0, 3, 6, 8}, count[] = {3, 3, 2, 2};
  for (int s = 0; s < 4; ++s) {
    PipelineStage st = pipeline_stage(c, 4, s);
    EXPECT_EQ(st.first_layer, first[s]);
    EXPECT_EQ(st.num_layers, count[s]);
    EXPECT_EQ(st.has_embedding, s == 0);
    EXPECT_EQ(st.has_head, s == 3);
  }
  EXPECT_EQ(pipeline_stage(c, 1, 0), full_model_stage(c));
  try {
    pipeline_stage(c, 11, 0);
    FAIL() << "11 stages of 10 layers accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("use parallel.pp <= 10"), std::string::npos) << e.what();
  }
}

TEST(PipelineStage, StageHoldsOnlyItsParametersUnderGlobalNames) {
  for (bool tied : {false, true}) {
    ModelConfig c = config(Arch::llama, 4, tied);
    Model whole(c);
    Model s0(c, pipeline_stage(c, 2, 0)), s1(c, pipeline_stage(c, 2, 1));
    const int64_t VC = int64_t(c.vocab_size) * c.hidden;
    // Together the stages hold the whole model, the tied embedding twice.
    EXPECT_EQ(s0.num_params() + s1.num_params(), whole.num_params() + (tied ? VC : 0));
    EXPECT_NO_THROW(s1.param("model.layers.2.self_attn.q_proj.weight"));
    EXPECT_THROW(s1.param("model.layers.1.self_attn.q_proj.weight"), Error);
    EXPECT_THROW(s0.param("model.norm.weight"), Error);
    EXPECT_NO_THROW(s1.param("model.norm.weight"));
    if (tied) {
      EXPECT_NO_THROW(s1.param("model.embed_tokens.weight"));
    } else {
      EXPECT_THROW(s1.param("model.embed_tokens.weight"), Error);
    }
    // Scatter then gather gives back every weight.
    whole.init_weights(5);
    Model back(c);
    for (Model* s : {&s0, &s1}) {
      copy_shared_params(whole, whole.weights().f32(), *s, s->weights().f32());
      copy_shared_params(*s, s->weights().f32(), back, back.weights().f32());
    }
    EXPECT_EQ(std::memcmp(back.weights().raw(), whole.weights().raw(), whole.weights().nbytes()),
              0);
  }
}

struct Case {
  Arch arch;
  int layers, stages;
  bool tied;
  TrainOptions opt;
};

TEST(PipelineStage, ChainedStagesMatchTheWholeModel) {
  const Case cases[] = {
      {Arch::llama, 4, 2, false, {}},
      {Arch::llama, 5, 3, true, {}},
      {Arch::gpt2, 3, 3, true, {}},
      // recompute_layers counts global layers: on the second stage only layer 1 recomputes.
      {Arch::llama, 4, 2, false, {Precision::fp32, Recompute::full, 3}},
      {Arch::gpt2, 4, 2, false, {Precision::bf16, Recompute::selective, -1}},
  };
  const int B = 2, T = 19;
  for (const Case& k : cases) {
    SCOPED_TRACE(std::string(k.arch == Arch::llama ? "llama" : "gpt2") + " stages " +
                 std::to_string(k.stages) + (k.tied ? " tied" : ""));
    ModelConfig c = config(k.arch, k.layers, k.tied);
    Model whole(c);
    whole.init_weights(7);
    std::vector<int> ids(B * T), tg(B * T);
    Rng rng(3);
    for (int i = 0; i < B * T; ++i) {
      ids[i] = int(rng.below(c.vocab_size));
      tg[i] = i % 7 == 0 ? -1 : int(rng.below(c.vocab_size));
    }
    TrainState whole_ts(whole, B, T, k.opt);
    std::vector<float> want(whole.num_params(), 0.0f);
    const double want_loss = whole_ts.step(whole, ids.data(), tg.data(), want.data(), 0.5f);

    std::vector<std::unique_ptr<Model>> stages;
    std::vector<std::unique_ptr<TrainState>> states;
    std::vector<std::vector<float>> grads;
    for (int s = 0; s < k.stages; ++s) {
      stages.push_back(std::make_unique<Model>(c, pipeline_stage(c, k.stages, s)));
      copy_shared_params(whole, whole.weights().f32(), *stages[s], stages[s]->weights().f32());
      states.push_back(std::make_unique<TrainState>(*stages[s], B, T, k.opt));
      grads.emplace_back(stages[s]->num_params(), 0.0f);
    }
    double loss = 0;
    const float* x = nullptr;
    for (int s = 0; s < k.stages; ++s) {
      loss = states[s]->forward_stage(*stages[s], ids.data(), x, tg.data(), grads[s].data(), 0.5f);
      x = states[s]->stage_output();
    }
    const float* dx = nullptr;
    for (int s = k.stages - 1; s >= 0; --s)
      dx = states[s]->backward_stage(*stages[s], ids.data(), dx, grads[s].data());
    EXPECT_EQ(dx, nullptr);
    EXPECT_EQ(loss, want_loss);

    // Gather the stages' gradients; a tied embedding's two parts add up.
    std::vector<float> got(whole.num_params(), 0.0f);
    for (int s = k.stages - 1; s >= 0; --s) {
      std::vector<float> part(whole.num_params(), 0.0f);
      copy_shared_params(*stages[s], grads[s].data(), whole, part.data());
      for (size_t i = 0; i < got.size(); ++i) got[i] += part[i];
    }
    for (const ParamInfo& p : whole.params()) {
      double scale = 1e-30, diff = 0;
      for (int64_t i = p.offset; i < p.offset + p.numel(); ++i) {
        scale = std::max(scale, double(std::fabs(want[i])));
        diff = std::max(diff, double(std::fabs(want[i] - got[i])));
      }
      const bool shared = k.tied && p.name.find("embed_tokens") != std::string::npos;
      const bool shared_gpt2 = k.tied && p.name.find(".wte.") != std::string::npos;
      EXPECT_LE(diff, (shared || shared_gpt2) ? 1e-6 * scale : 0.0) << p.name;
    }
  }
}

}  // namespace
}  // namespace kiln

// LoRA training (model/lora.h, model/lora_linear.h, TrainState with TrainOptions::lora) against
// PyTorch: tests/parity/torch_reference.py --adapter builds the same base from kiln's checkpoint,
// wraps every adapted layer as PEFT's formula says (base(x) + s B A x, the base frozen) and gives
// the loss, the adapter's gradients and five AdamW steps with weight decay and clipping. The
// adapter has random B (PEFT starts B at 0, where A's gradient is 0 and nothing would be tested).
// Tolerances are the whole-model parity test's (tests/train/test_parity.cpp explains them).
// Then what PyTorch cannot check deterministically: dropout (its mask repeats within a step, so
// recomputation is bit-exact and a finite difference matches the gradient), and that merging
// (W + s B A) gives the adapted model's output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/lora.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/elementwise.h"
#include "kiln/ops/matmul.h"
#include "kiln/train/optimizer.h"
#include "lora_test_util.h"
#include "parity/parity_case.h"
#include "test_util.h"

namespace kiln {
namespace {

// An adapter with A as PEFT initialises it and B random, so both gradients are non-zero.
LoraWeights random_adapter(const Model& base, LoraConfig cfg, uint64_t seed) {
  LoraWeights ad(base, std::move(cfg));
  test::init_with_random_b(ad, seed, 0.05f);
  return ad;
}

std::vector<float> logits_of(const Model& m, const TrainState& ts) {
  const ModelConfig& c = m.config();
  const int N = ts.B() * ts.T();
  std::vector<float> out(size_t(N) * c.vocab_size);
  ModelParams w = m.bind(const_cast<float*>(m.weights().f32()));
  ops::ref::gemm(out.data(), ts.final_hidden().f32(), w.lm_head, N, c.vocab_size, c.hidden, false,
                 true, 1, 0);
  return out;
}

void check_lora_parity(const std::string& config_name, LoraConfig lcfg) {
  test::TempDir dir("lora_parity");
  const int B = 2, T = 16, steps = 5;
  const float lr = 1e-3f, clip = 1.0f;
  test::ParityCase c;
  std::unique_ptr<LoraWeights> ad;
  test::make_parity_case(dir, config_name, B, T, steps, c, [&](const Model& base) {
    ad = std::make_unique<LoraWeights>(random_adapter(base, lcfg, 5));
    save_lora_adapter(ad->adapter(), dir / "adapter");
    return " --adapter " + (dir / "adapter");
  });
  if (::testing::Test::HasFatalFailure()) return;
  Model& base = *c.model;
  const Tensor base_before = base.weights().clone();
  TrainOptions opt;
  opt.lora = ad.get();
  TrainState ts(base, B, T, opt);
  Tensor grads = Tensor::zeros({ad->num_params()});
  const double loss = ts.step(base, c.ids.data(), c.targets.data(), grads.f32());
  const std::vector<float> logits = logits_of(base, ts);
  EXPECT_LT(test::normalized_error(logits.data(), c.ref.get("logits").f32(), logits.size()), 2e-5);
  EXPECT_NEAR(loss, c.ref.get("loss").f32()[0], 1e-5 * std::fabs(loss));
  ASSERT_FALSE(ad->params().empty());
  for (const ParamInfo& p : ad->params()) {
    const Tensor& g = c.ref.get("grad." + p.name);
    ASSERT_EQ(g.numel(), p.numel()) << p.name;
    EXPECT_LT(test::normalized_error(grads.f32() + p.offset, g.f32(), p.numel()), 1e-4) << p.name;
  }

  AdamW adamw(ad->num_params(), {0.9f, 0.95f, 1e-8f, 0.1f});
  const float* ref_losses = c.ref.get("step_losses").f32();
  for (int s = 0; s < steps; ++s) {
    std::memset(grads.raw(), 0, grads.nbytes());
    const double l = ts.step(base, c.ids.data(), c.targets.data(), grads.f32());
    EXPECT_NEAR(l, ref_losses[s], 2e-5 * std::fabs(ref_losses[s])) << "step " << s;
    const double norm = grad_norm(grads.f32(), grads.numel());
    ASSERT_TRUE(clip_and_update(
        norm, clip, [&](float k) { ops::cpu::scale(grads.f32(), k, grads.numel()); },
        [&] { adamw.step(ad->params(), ad->weights().f32(), grads.f32(), lr); }));
  }
  for (const ParamInfo& p : ad->params())
    EXPECT_LE(test::worst_final_weight(ad->weights().f32(), c.ref, p, lr, steps), 1.0) << p.name;
  // The base is frozen: its weights are the same bits.
  EXPECT_EQ(std::memcmp(base.weights().raw(), base_before.raw(), base.weights().nbytes()), 0);

  // Merged (W + s B A) gives the adapted model's logits.
  Model merged(base.config());
  std::memcpy(merged.weights().raw(), base.weights().raw(), base.weights().nbytes());
  merge_lora(merged, ad->adapter());
  TrainState plain(merged, B, T);
  TrainState adapted(base, B, T, opt);
  plain.step(merged, c.ids.data(), c.targets.data(), nullptr);
  adapted.step(base, c.ids.data(), c.targets.data(), nullptr);
  const std::vector<float> a = logits_of(merged, plain), b = logits_of(base, adapted);
  EXPECT_LT(test::normalized_error(a.data(), b.data(), a.size()), 2e-5);
}

TEST(LoraTraining, LlamaAllLinearMatchesPyTorch) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 8;
  c.target_modules = {"all-linear"};
  check_lora_parity("llama-tiny.json", c);
}

TEST(LoraTraining, LlamaDefaultTargetsRsloraMatchPyTorch) {
  LoraConfig c;  // q_proj and v_proj, PEFT's default for Llama
  c.r = 8;
  c.alpha = 16;
  c.rslora = true;
  check_lora_parity("llama-tiny.json", c);
}

TEST(LoraTraining, Gpt2ConvOneDMatchesPyTorch) {
  LoraConfig c;
  c.r = 4;
  c.alpha = 4;
  c.target_modules = {"c_attn", "c_proj", "c_fc"};  // c_proj: the attention's and the MLP's
  check_lora_parity("gpt2-tiny.json", c);
}

// A small model, batch and adapter for the checks that need no oracle.
struct Fixture {
  std::unique_ptr<Model> base;
  std::vector<int32_t> ids, targets;
  int B = 2, T = 8;
  explicit Fixture(const std::string& config) {
    base = std::make_unique<Model>(
        load_model_config(test::source_dir() + "/configs/models/" + config));
    base->init_weights(3);
    Rng rng(4);
    for (int i = 0; i < B * T; ++i) {
      ids.push_back(int32_t(rng.below(base->config().vocab_size)));
      targets.push_back(int32_t(rng.below(base->config().vocab_size)));
    }
  }
};

TEST(LoraTraining, InitialisedAsPeftStartsAtTheBase) {
  Fixture f("llama-tiny.json");
  LoraConfig lc;
  lc.target_modules = {"all-linear"};
  LoraWeights ad(*f.base, lc);
  ad.init(1);
  // A is U(-1/sqrt(in), 1/sqrt(in)) and not all zero; B is zero.
  for (const ParamInfo& p : ad.params()) {
    const float* w = ad.weights().f32() + p.offset;
    double most = 0;
    for (int64_t i = 0; i < p.numel(); ++i) most = std::max(most, double(std::fabs(w[i])));
    if (p.name.find("lora_B") != std::string::npos) {
      EXPECT_EQ(most, 0.0) << p.name;
    } else {
      EXPECT_GT(most, 0.5 / std::sqrt(double(p.shape[1]))) << p.name;
      EXPECT_LE(most, 1.0 / std::sqrt(double(p.shape[1]))) << p.name;
    }
  }
  TrainOptions opt;
  opt.lora = &ad;
  TrainState with(*f.base, f.B, f.T, opt), without(*f.base, f.B, f.T);
  EXPECT_EQ(with.step(*f.base, f.ids.data(), f.targets.data(), nullptr),
            without.step(*f.base, f.ids.data(), f.targets.data(), nullptr));
}

// train.precision bf16: the adapter's GEMMs take bf16 inputs (as the base's do). Oracle: the
// fp32 step, with and without dropout (the same masks): the loss within 0.1% and the adapter's
// gradient within 2% (normwise; measured 4e-5 and 0.6%): bf16's 2^-8 rounding of every GEMM
// input, the base's and the adapter's, summed in fp32.
TEST(LoraTraining, Bf16AdapterGemmsTrackFp32) {
  Fixture f("llama-tiny.json");
  for (float p : {0.0f, 0.2f}) {
    LoraConfig lc;
    lc.r = 8;
    lc.alpha = 16;
    lc.dropout = p;
    lc.target_modules = {"all-linear"};
    const LoraWeights ad = random_adapter(*f.base, lc, 4);
    std::vector<Tensor> g;
    std::vector<double> loss;
    for (Precision prec : {Precision::fp32, Precision::bf16}) {
      TrainOptions opt;
      opt.precision = prec;
      opt.lora = &ad;
      TrainState ts(*f.base, f.B, f.T, opt);
      ts.set_lora_seed(9);
      g.push_back(Tensor::zeros({ad.num_params()}));
      loss.push_back(ts.step(*f.base, f.ids.data(), f.targets.data(), g.back().f32()));
    }
    EXPECT_NEAR(loss[1], loss[0], 1e-3 * loss[0]) << "dropout " << p;
    EXPECT_LT(test::normalized_error(g[1].f32(), g[0].f32(), ad.num_params()), 0.02)
        << "dropout " << p;
  }
}

TEST(LoraTraining, DropoutIsRepeatableAndItsGradientIsTheLossSlope) {
  Fixture f("llama-tiny.json");
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.dropout = 0.3f;
  lc.target_modules = {"all-linear"};
  LoraWeights ad = random_adapter(*f.base, lc, 9);
  TrainOptions opt;
  opt.lora = &ad;
  TrainOptions full = opt;
  full.recompute = Recompute::full;
  TrainState ts(*f.base, f.B, f.T, opt), rc(*f.base, f.B, f.T, full);
  ts.set_lora_seed(77);
  rc.set_lora_seed(77);
  Tensor g1 = Tensor::zeros({ad.num_params()}), g2 = Tensor::zeros({ad.num_params()});
  const double l1 = ts.step(*f.base, f.ids.data(), f.targets.data(), g1.f32());
  const double l2 = rc.step(*f.base, f.ids.data(), f.targets.data(), g2.f32());
  // Recomputation redraws the same masks: the same bits.
  EXPECT_EQ(l1, l2);
  EXPECT_EQ(std::memcmp(g1.raw(), g2.raw(), g1.nbytes()), 0);
  // Dropout is on in training steps only: forward alone is the dropout-free model.
  LoraConfig no_drop = lc;
  no_drop.dropout = 0;
  LoraWeights plain(*f.base, no_drop);
  std::memcpy(plain.weights().raw(), ad.weights().raw(), ad.weights().nbytes());
  TrainOptions popt;
  popt.lora = &plain;
  TrainState p(*f.base, f.B, f.T, popt);
  const double eval = ts.step(*f.base, f.ids.data(), f.targets.data(), nullptr);
  EXPECT_EQ(eval, p.step(*f.base, f.ids.data(), f.targets.data(), nullptr));
  EXPECT_NE(eval, l1);
  // Another seed, other masks.
  ts.set_lora_seed(78);
  Tensor g3 = Tensor::zeros({ad.num_params()});
  EXPECT_NE(ts.step(*f.base, f.ids.data(), f.targets.data(), g3.f32()), l1);
  // Central differences of the (masked) training loss against the gradient, in double-checked
  // fp32: a few of each tensor's largest entries.
  ts.set_lora_seed(77);
  Tensor scratch = Tensor::zeros({ad.num_params()});
  auto loss_at = [&](int64_t i, float x) {
    const float keep = ad.weights().f32()[i];
    ad.weights().f32()[i] = x;
    const double l = ts.step(*f.base, f.ids.data(), f.targets.data(), scratch.f32());
    ad.weights().f32()[i] = keep;
    return l;
  };
  int checked = 0;
  for (const ParamInfo& pi : ad.params()) {
    if (pi.name.find("layers.1.") == std::string::npos) continue;  // one layer is enough
    int64_t best = pi.offset;
    for (int64_t i = pi.offset; i < pi.offset + pi.numel(); ++i)
      if (std::fabs(g1.f32()[i]) > std::fabs(g1.f32()[best])) best = i;
    const float w = ad.weights().f32()[best], h = 1e-2f;
    const double slope = (loss_at(best, w + h) - loss_at(best, w - h)) / (2.0 * h);
    EXPECT_NEAR(slope, g1.f32()[best], 0.02 * std::fabs(g1.f32()[best]) + 1e-4) << pi.name;
    ++checked;
  }
  EXPECT_EQ(checked, 14);  // 7 projections x (A, B)
}

TEST(LoraTraining, TargetsFollowPeftMatchingAndBadOnesAreNamed) {
  Fixture f("gpt2-tiny.json");
  LoraConfig lc;  // GPT-2's default: c_attn
  LoraWeights def(*f.base, lc);
  for (const ParamInfo& p : def.params())
    EXPECT_NE(p.name.find(".attn.c_attn.lora_"), std::string::npos);
  lc.target_modules = {"mlp.c_proj"};
  LoraWeights mlp(*f.base, lc);
  for (const ParamInfo& p : mlp.params())
    EXPECT_NE(p.name.find(".mlp.c_proj.lora_"), std::string::npos);
  EXPECT_EQ(mlp.params().size(), size_t(2 * f.base->config().layers));
  lc.target_modules = {"q_proj"};
  try {
    LoraWeights bad(*f.base, lc);
    FAIL() << "q_proj matched a GPT-2 layer";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'q_proj', which matches no linear layer"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("c_attn"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kiln

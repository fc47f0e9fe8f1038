// The whole model against PyTorch: logits, loss, every parameter gradient and five AdamW steps
// (with weight decay and clipping), for a Llama config with GQA and a GPT-2 config. The oracle
// is produced during the test by tests/parity/torch_reference.py from the same config.json +
// model.safetensors that kiln writes.
//
// Tolerances. Every value is fp32 on both sides, computed in different orders (OpenBLAS vs
// PyTorch's kernels, flash vs materialized softmax). A K-term fp32 dot product carries a
// relative error of about sqrt(K) * 2^-24 ~ 1e-6 for K <= 256; two layers of a few chained ops
// grow that to a few 1e-6, so logits must agree to 2e-5 of their largest magnitude (measured:
// ~1e-6). Gradients pass through the whole backward chain and sums over B*T tokens, so their
// bound is 1e-4 of each tensor's largest magnitude (measured: ~1e-6). After 5 AdamW steps the
// update m / sqrt(v) normalizes away gradient magnitude: for a gradient near the fp32 noise
// floor (e.g. a tied embedding row where the lookup and head gradients nearly cancel) the two
// implementations may move the weight differently by a visible fraction of lr. Final weights
// must agree to 1% of the largest possible total movement (lr * steps) plus 1e-5 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/matmul.h"
#include "kiln/train/optimizer.h"
#include "parity/parity_case.h"
#include "test_util.h"

namespace kiln {
namespace {

void check_parity(const std::string& config_name) {
  test::TempDir dir("parity");
  const int B = 2, T = 16, steps = 5;
  const float lr = 1e-3f, clip = 1.0f;
  test::ParityCase c;
  test::make_parity_case(dir, config_name, B, T, steps, c);
  if (::testing::Test::HasFatalFailure()) return;
  Model& model = *c.model;
  const ModelConfig& cfg = model.config();
  const SafeTensorsFile& ref = c.ref;
  const std::vector<int32_t>& ids = c.ids;
  const std::vector<int32_t>& targets = c.targets;
  TrainState ts(model, B, T);
  Tensor grads = Tensor::zeros({model.num_params()});
  double loss = ts.step(model, ids.data(), targets.data(), grads.f32());

  // Logits from the final hidden states and the head.
  const int V = cfg.vocab_size, C = cfg.hidden;
  std::vector<float> logits(size_t(B) * T * V);
  ModelParams w = model.bind(model.weights().f32());
  ops::ref::gemm(logits.data(), ts.final_hidden().f32(), w.lm_head, B * T, V, C, false, true, 1, 0);
  EXPECT_LT(test::normalized_error(logits.data(), ref.get("logits").f32(), logits.size()), 2e-5);
  EXPECT_NEAR(loss, ref.get("loss").f32()[0], 1e-5 * std::fabs(loss));
  if (cfg.moe.enabled()) {  // the routing's auxiliary losses and drops, pooled over the layers
    const MoeStats* st = ts.moe_stats();
    ASSERT_NE(st, nullptr);
    EXPECT_NEAR(st->aux(), ref.get("moe_aux").f32()[0], 1e-5 * st->aux());
    EXPECT_NEAR(st->z(), ref.get("moe_z").f32()[0], 1e-5 * st->z());
    EXPECT_EQ(st->dropped, int64_t(ref.get("moe_dropped").f32()[0]));
    if (cfg.moe.capacity_factor > 0) EXPECT_GT(st->dropped, 0) << "the case must drop tokens";
  }

  for (const ParamInfo& p : model.params()) {
    const Tensor& g = ref.get("grad." + p.name);
    ASSERT_EQ(g.numel(), p.numel()) << p.name;
    EXPECT_LT(test::normalized_error(grads.f32() + p.offset, g.f32(), p.numel()), 1e-4) << p.name;
  }

  AdamW opt(model, {0.9f, 0.95f, 1e-8f, 0.1f});
  const float* ref_losses = ref.get("step_losses").f32();
  for (int s = 0; s < steps; ++s) {
    std::memset(grads.raw(), 0, grads.nbytes());
    double l = ts.step(model, ids.data(), targets.data(), grads.f32());
    EXPECT_NEAR(l, ref_losses[s], 2e-5 * std::fabs(ref_losses[s])) << "step " << s;
    double norm;
    ASSERT_TRUE(clip_and_step(model, opt, grads.f32(), lr, clip, &norm));
    ts.refresh_weights(model);
  }
  for (const ParamInfo& p : model.params())
    EXPECT_LE(test::worst_final_weight(model, ref, p, lr, steps), 1.0) << p.name;
}

TEST(Parity, LlamaWithGqaMatchesPyTorch) {
  check_parity("llama-tiny.json");
}
TEST(Parity, Gpt2MatchesPyTorch) {
  check_parity("gpt2-tiny.json");
}
// Mixtral: routing, the top-k renormalisation, the load-balancing and z losses (coefficients
// raised so their gradients show), every expert's and the router's gradient, 5 AdamW steps.
TEST(Parity, MixtralMatchesPyTorch) {
  check_parity("mixtral-tiny.json");
}
// The same with a capacity factor of 1: the pairs over an expert's capacity dropped as the
// oracle's direct loop drops them.
TEST(Parity, MixtralWithCapacityDropsAsPyTorch) {
  test::TempDir dir("parity-capacity");
  nlohmann::json j = read_json_file(test::source_dir() + "/configs/models/mixtral-tiny.json");
  j["moe_capacity_factor"] = 1.0;
  write_file_atomic(dir / "mixtral-capacity.json", j.dump(2));
  check_parity(dir / "mixtral-capacity.json");
}

}  // namespace
}  // namespace kiln

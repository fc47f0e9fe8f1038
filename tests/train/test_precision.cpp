// Mixed precision through the real training loop (train/trainer.cpp).
//
// bf16 vs fp32. bf16 keeps 8 significant bits, so each GEMM input carries a relative rounding
// error of at most 2^-9 = 0.2%; a dot product of C such terms with independent errors has a
// relative error of about 2^-9 / sqrt(C) of its magnitude scale, and the loss, a smooth function
// of the logits, moves by about that fraction: ~1e-4 relative at C = 256. Training then feeds the
// difference back through the updates, so the curves drift apart slowly while training is stable;
// over 40 steps at lr 6e-4 we allow 2e-3 of the loss at every step (measured: at most 5e-4). (At
// a learning rate high enough for loss spikes, any perturbation — bf16 or a different thread
// count — sends the run down another chaotic path; that is not a precision property.)
//
// fp16. Power-of-two loss scales make scaling and unscaling exact, so a run whose overflowing
// attempts are detected, skipped and retried at a lower scale lands where a run at a fixed scale
// low enough never to overflow does. Not bit for bit: activation gradients are rounded to fp16
// values, and which of them fall into fp16's subnormal range (below 2^-14) depends on the scale,
// so the two runs differ by a few fp16 subnormal roundings: measured ~2e-6 relative in the loss;
// we allow 1e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/train/train_config.h"
#include "kiln/train/trainer.h"
#include "test_util.h"

namespace kiln {
namespace {

std::string corpus() {
  const char* words[] = {"alpha", "beta", "gamma", "delta", "river", "stone", "light", "quiet"};
  Rng rng(3);
  std::string s;
  for (int i = 0; i < 20000; ++i)
    s += std::string(words[rng.below(8)]) + (i % 9 == 8 ? ".\n" : " ");
  return s;
}

std::vector<nlohmann::json> run(const test::TempDir& dir, const std::string& name,
                                const std::vector<std::string>& overrides) {
  std::vector<std::string> o = {"run_dir=" + (dir / name),
                                "data.train=[" + (dir / "corpus.txt") + "]"};
  o.insert(o.end(), overrides.begin(), overrides.end());
  TrainConfig cfg = load_train_config(dir / "cfg.yaml", o);
  train(cfg, false);
  std::vector<nlohmann::json> recs;
  std::istringstream in(read_file(dir / name + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) recs.push_back(nlohmann::json::parse(line));
  return recs;
}

class Precision : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file_atomic(dir / "corpus.txt", corpus());
    // The quickstart's model shape (configs/quickstart.yaml), shorter runs.
    write_file_atomic(dir / "cfg.yaml", R"(seed: 5
model:
  architectures: [LlamaForCausalLM]
  hidden_size: 256
  intermediate_size: 704
  num_hidden_layers: 4
  num_attention_heads: 8
  num_key_value_heads: 4
  max_position_embeddings: 256
  tie_word_embeddings: true
data:
  val_fraction: 0.05
train:
  steps: 40
  batch_size: 4
  seq_len: 64
  eval_every: 0
  checkpoint_every: 0
  samples: 0
optim:
  lr: 6.0e-4
  warmup_steps: 10
)");
  }
  test::TempDir dir{"precision"};
};

TEST_F(Precision, Bf16TracksFp32) {
  auto fp32 = run(dir, "fp32", {"train.precision=fp32"});
  auto bf16 = run(dir, "bf16", {"train.precision=bf16"});
  ASSERT_EQ(fp32.size(), bf16.size());
  double worst = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    double a = fp32[i]["loss"], b = bf16[i]["loss"];
    worst = std::max(worst, std::fabs(a - b) / a);
    EXPECT_LT(std::fabs(a - b), 2e-3 * a) << "step " << i + 1;
  }
  EXPECT_LT(double(bf16.back()["loss"]), 0.8 * double(bf16.front()["loss"]));  // it learns
  std::printf("bf16 vs fp32: worst relative loss difference %.2e over %zu steps\n", worst,
              fp32.size());
}

TEST_F(Precision, Fp16InjectedOverflowIsSkippedAndRetried) {
  auto dynamic = run(dir, "dyn",
                     {"train.precision=fp16", "train.steps=8", "loss_scale.initial=65536",
                      "loss_scale.hysteresis=1", "train.inject_overflow_at=[3]"});
  auto fixed = run(dir, "fixed",
                   {"train.precision=fp16", "train.steps=8", "loss_scale.dynamic=false",
                    "loss_scale.initial=32768"});
  ASSERT_EQ(dynamic.size(), 8u);
  EXPECT_EQ(dynamic[1]["loss_scale"], 65536.0);
  EXPECT_EQ(dynamic[2]["skipped"], 1);           // step 3: detected and skipped ...
  EXPECT_EQ(dynamic[2]["loss_scale"], 32768.0);  // ... the scale halved ...
  for (size_t i = 0; i < fixed.size(); ++i) {    // ... and the run is where a low fixed scale is
    double a = dynamic[i]["loss"], b = fixed[i]["loss"];
    EXPECT_NEAR(a, b, 1e-5 * b) << "step " << i + 1;
  }
}

TEST_F(Precision, Fp16RealOverflowFromHugeScale) {
  // 2^32 (Megatron's default) times these gradients exceeds fp16's 65504: the scaler must walk the
  // scale down, skipping each overflowing attempt, and then train exactly as a fixed safe scale
  // does.
  auto dynamic = run(dir, "huge",
                     {"train.precision=fp16", "train.steps=5", "loss_scale.initial=4294967296",
                      "loss_scale.hysteresis=1"});
  auto fixed = run(dir, "safe",
                   {"train.precision=fp16", "train.steps=5", "loss_scale.dynamic=false",
                    "loss_scale.initial=1024"});
  EXPECT_GT(int(dynamic[0]["skipped"]), 0);
  EXPECT_LT(double(dynamic[0]["loss_scale"]), 4294967296.0);
  for (size_t i = 0; i < fixed.size(); ++i) {
    double a = dynamic[i]["loss"], b = fixed[i]["loss"];
    EXPECT_NEAR(a, b, 1e-5 * b) << "step " << i + 1;
  }
}

TEST_F(Precision, NonFiniteLossStopsTheRunWithAMessage) {
  try {
    run(dir, "nan",
        {"optim.lr=1e30", "optim.warmup_steps=0", "train.max_skips=3", "optim.grad_clip=0"});
    FAIL() << "a diverging run must stop";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("consecutive steps without a finite update"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kiln

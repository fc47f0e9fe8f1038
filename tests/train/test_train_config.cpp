#include "kiln/train/train_config.h"

#include <gtest/gtest.h>

#include "io/io_test_util.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

const char* kTiny =
    "run_dir: runs/t\n"
    "model: {architectures: [LlamaForCausalLM], hidden_size: 32, num_hidden_layers: 2,\n"
    "        num_attention_heads: 4, intermediate_size: 64, max_position_embeddings: 64}\n"
    "data: {train: [a.txt], tokenizer: byte}\n"
    "train: {steps: 10, batch_size: 2, seq_len: 16}\n"
    "optim: {lr: 0.01, schedule: linear}\n";

TrainConfig load(TempDir& dir, const std::string& text, std::vector<std::string> overrides = {}) {
  const std::string path = dir.file("c.yaml");
  write_file_atomic(path, text);
  return load_train_config(path, overrides);
}

TEST(TrainConfig, ReadsEverySectionAndKeepsDefaults) {
  TempDir dir;
  TrainConfig c = load(dir, kTiny);
  EXPECT_EQ(c.run_dir, "runs/t");
  EXPECT_EQ(c.model.layers, 2);
  EXPECT_TRUE(c.vocab_from_tokenizer);
  EXPECT_EQ(c.data.train, std::vector<std::string>{"a.txt"});
  EXPECT_EQ(c.train.steps, 10);
  EXPECT_EQ(c.train.grad_accum, 1);  // default
  EXPECT_FLOAT_EQ(c.optim.lr, 0.01f);
  EXPECT_EQ(c.optim.schedule, LrSchedule::linear);
  EXPECT_EQ(c.parallel.tp, 1);
  EXPECT_EQ(c.device, Device::cpu);
}

TEST(TrainConfig, DottedOverridesWinAndAreSavedInTheYaml) {
  TempDir dir;
  TrainConfig c =
      load(dir, kTiny,
           {"optim.lr=3e-4", "train.steps=7", "parallel.zero=2", "data.train=[x.txt, y.txt]"});
  EXPECT_FLOAT_EQ(c.optim.lr, 3e-4f);
  EXPECT_EQ(c.train.steps, 7);
  EXPECT_EQ(c.parallel.zero, 2);
  EXPECT_EQ(c.data.train, (std::vector<std::string>{"x.txt", "y.txt"}));
  EXPECT_TRUE(has(c.yaml, "steps: 7"));
}

TEST(TrainConfig, EachBadKeyOrValueIsNamed) {
  TempDir dir;
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"optim.lrr=1"}, "unknown key 'optim.lrr'"},
      {{"trian.steps=1"}, "unknown key 'trian'"},
      {{"train.steps=lots"}, "'train.steps' has an invalid value 'lots'"},
      {{"train.steps=0"}, "train.steps must be positive"},
      {{"optim.schedule=step"}, "optim.schedule 'step' is unknown"},
      {{"parallel.zero=4"}, "parallel.zero = 4 is not a ZeRO stage"},
      {{"parallel.sequence_parallel=true"}, "needs parallel.tp > 1"},
      {{"loss_scale.initial=3"}, "must be powers of two"},
      {{"train.recompute_layers=3"}, "the model has 2 layers"},
      {{"data.val_fraction=1"}, "data.val_fraction must be in [0, 1)"},
      {{"data.blend=3"}, "data.blend must be a list"},
      {{"device=tpu"}, "device is 'tpu'; use cpu or cuda"},
      {{"bad override"}, "must look like section.key=value"},
  };
  for (const auto& [overrides, piece] : cases)
    EXPECT_TRUE(has(error_of([&] { load(dir, kTiny, overrides); }), piece)) << overrides[0];
}

TEST(TrainConfig, NoModelNoDataAndBadYamlAreExplained) {
  TempDir dir;
  EXPECT_TRUE(has(error_of([&] { load(dir, "data: {mock: true}\n"); }), "no 'model' section"));
  EXPECT_TRUE(has(error_of([&] { load(dir, "init_from: ckpt\n"); }), "no training data"));
  EXPECT_TRUE(has(error_of([&] { load(dir, "model: [unclosed\n"); }), "not valid YAML at line"));
  EXPECT_TRUE(has(error_of([&] { load(dir, "- a\n- b\n"); }), "must be a mapping"));
}

}  // namespace
}  // namespace kiln

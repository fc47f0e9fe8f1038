// Mixture-of-Experts through the commands a user runs: `kiln train` on a Mixtral config learns,
// logs the routing (the auxiliary losses, each expert's share of the tokens, the dropped pairs
// under a capacity factor) and resumes bit for bit; data parallelism with ZeRO follows the
// one-process curve, and expert parallelism the data-parallel one, its checkpoints resuming under
// another layout; the checkpoint generates, exports to GGUF and generates from it; and bad
// configurations and checkpoints fail with a message naming the key or tensor, on every rank.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "test_util.h"
#include "train_test_util.h"

namespace kiln {
namespace {

class TrainMoe : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file_atomic(dir / "corpus.txt", test::word_corpus());
    write_file_atomic(dir / "moe.yaml", R"(seed: 5
model:
  architectures: [MixtralForCausalLM]
  hidden_size: 32
  intermediate_size: 32
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  max_position_embeddings: 64
  num_local_experts: 4
  num_experts_per_tok: 2
  output_router_logits: true
  router_aux_loss_coef: 0.02
  router_z_loss_coef: 0.001
data:
  val_fraction: 0.05
train:
  steps: 30
  batch_size: 4
  seq_len: 32
  eval_every: 10
  eval_batches: 2
  checkpoint_every: 10
  keep_checkpoints: 0
  samples: 0
optim:
  lr: 3.0e-3
  warmup_steps: 5
)");
  }
  test::CommandResult kiln(const std::string& args) {
    return test::run_command(test::kiln_binary() + " " + args);
  }
  std::string train_args(const std::string& run) {
    return "train " + (dir / "moe.yaml") + " run_dir=" + run + " data.train=[" +
           (dir / "corpus.txt") + "] --threads 2";
  }
  std::vector<nlohmann::json> records(const std::string& run) {
    std::vector<nlohmann::json> out;
    std::istringstream in(read_file(run + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }
  test::TempDir dir{"train-moe"};
};

TEST_F(TrainMoe, LearnsLogsTheRoutingAndResumesBitExactly) {
  const std::string run = dir / "run";
  auto r = kiln(train_args(run));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto recs = records(run);
  ASSERT_EQ(recs.size(), 30u);
  EXPECT_LT(recs.back()["loss"].get<double>(), 0.7 * recs.front()["loss"].get<double>());
  for (const auto& j : recs) {
    const auto f = j.at("expert_fractions").get<std::vector<double>>();
    ASSERT_EQ(f.size(), 4u);
    double sum = 0;
    for (double x : f) sum += x;
    EXPECT_NEAR(sum, 1.0, 1e-9);
    // Switch's loss is k at perfect balance and grows with imbalance (k = 2 here).
    EXPECT_GE(j.at("moe_aux_loss").get<double>(), 1.99);
    EXPECT_GT(j.at("moe_z_loss").get<double>(), 0.0);
    EXPECT_EQ(j.at("moe_dropped").get<int64_t>(), 0);  // dropless by default
  }
  const auto config = read_json_file(run + "/checkpoints/step_00000030/config.json");
  EXPECT_EQ(config["architectures"][0], "MixtralForCausalLM");
  EXPECT_EQ(config["num_local_experts"], 4);

  // Stop after step 10 (lose the later checkpoints) and resume: the same bits.
  const std::string resumed = dir / "resumed";
  std::filesystem::copy(run, resumed, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(resumed + "/checkpoints/step_00000020");
  std::filesystem::remove_all(resumed + "/checkpoints/step_00000030");
  r = kiln(train_args(resumed) + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto again = records(resumed);
  ASSERT_EQ(again.size(), recs.size());
  for (size_t i = 0; i < recs.size(); ++i)
    EXPECT_EQ(again[i]["loss"].dump(), recs[i]["loss"].dump()) << "step " << i + 1;

  // The checkpoint generates; its GGUF (q8_0 experts) imports and generates too.
  r = kiln("generate --model " + run + " --prompt 'the cat' --max-new-tokens 8 --temperature 0");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string gguf = dir / "moe.gguf";
  r = kiln("export --model " + run + " --format gguf --type q8_0 --output " + gguf);
  ASSERT_EQ(r.status, 0) << r.output;
  r = kiln("generate --model " + gguf + " --prompt 'the cat' --max-new-tokens 8 --temperature 0");
  ASSERT_EQ(r.status, 0) << r.output;
}

TEST_F(TrainMoe, CapacityFactorDropsAndIsLogged) {
  const std::string run = dir / "capacity";
  auto r = kiln(train_args(run) + " model.moe_capacity_factor=1.0 train.steps=10");
  ASSERT_EQ(r.status, 0) << r.output;
  int64_t dropped = 0;
  for (const auto& j : records(run)) {
    dropped += j.at("moe_dropped").get<int64_t>();
    EXPECT_TRUE(std::isfinite(j["loss"].get<double>()));
  }
  EXPECT_GT(dropped, 0) << "a capacity of exactly the balanced load drops the overflow";
}

TEST_F(TrainMoe, DataParallelZeroFollowsOneProcess) {
  const std::string one = dir / "one", two = dir / "two";
  auto r = kiln(train_args(one) + " train.steps=8");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto a = test::run_losses(one);
  for (int zero : {1, 3}) {
    const std::string run = two + std::to_string(zero);
    r = test::run_command(test::mpirun_command(2) + test::kiln_binary() + " " + train_args(run) +
                          " train.steps=8 parallel.zero=" + std::to_string(zero));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto b = test::run_losses(run);
    ASSERT_EQ(a.size(), b.size());
    // The cross-entropy is the same mean; the auxiliary losses are each rank's own (as under
    // PyTorch's DDP), so the curves agree to the auxiliary terms' share.
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 2e-3 * a[i]) << "zero " << zero << " step " << i + 1;
  }
}

// Expert parallelism: the experts split over ep ranks, each routed row sent to its expert's rank
// and back. The same data-parallel math, so ep 2 follows plain dp 2 (and ep 2 x edp 2 plain dp
// 4) to float rounding: the experts' GEMMs run over the rows of several ranks at once.
TEST_F(TrainMoe, ExpertParallelFollowsDataParallel) {
  for (int np : {2, 4}) {
    SCOPED_TRACE(std::to_string(np) + " ranks");
    const std::string dp = dir / ("dp" + std::to_string(np)),
                      ep = dir / ("ep" + std::to_string(np));
    auto r = test::run_command(test::mpirun_command(np) + test::kiln_binary() + " " +
                               train_args(dp) + " train.steps=8 train.batch_size=8");
    ASSERT_EQ(r.status, 0) << r.output;
    r = test::run_command(test::mpirun_command(np) + test::kiln_binary() + " " + train_args(ep) +
                          " train.steps=8 train.batch_size=8 parallel.ep=2");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("ep 2 (2 of 4 experts per rank)"), std::string::npos) << r.output;
    const auto a = test::run_losses(dp), b = test::run_losses(ep);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-4 * a[i]) << "step " << i + 1;
  }
}

// A gathered checkpoint of an ep 2 run holds every expert under its Hugging Face name and
// resumes in one process (another layout), continuing the curve.
TEST_F(TrainMoe, ExpertParallelCheckpointResumesUnderAnotherLayout) {
  const std::string ep = dir / "ep", one = dir / "one";
  auto r = test::run_command(test::mpirun_command(2) + test::kiln_binary() + " " + train_args(ep) +
                             " train.steps=10 train.checkpoint_every=5 parallel.ep=2");
  ASSERT_EQ(r.status, 0) << r.output;
  std::filesystem::create_directories(one + "/checkpoints");
  std::filesystem::copy(ep + "/checkpoints/step_00000005", one + "/checkpoints/step_00000005",
                        std::filesystem::copy_options::recursive);
  std::filesystem::copy_file(ep + "/metrics.jsonl", one + "/metrics.jsonl");
  r = kiln(train_args(one) + " train.steps=10 train.checkpoint_every=5 --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto a = test::run_losses(ep), b = test::run_losses(one);
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 10u);
  for (size_t i = 5; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 2e-3 * a[i]) << "step " << i + 1;
}

TEST_F(TrainMoe, BadInputNamesTheKeyOrTensor) {
  auto r = kiln(train_args(dir / "bad1") + " model.num_experts_per_tok=5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("num_experts_per_tok = 5 must be between 1 and num_local_experts (4)"),
            std::string::npos)
      << r.output;
  r = kiln(train_args(dir / "bad2") + " model.router_jitter_noise=0.1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("router_jitter_noise"), std::string::npos) << r.output;
  r = test::run_command(test::mpirun_command(2) + test::kiln_binary() + " " +
                        train_args(dir / "bad3") + " parallel.tp=2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("parallel.tp = 2"), std::string::npos) << r.output;
  r = test::run_command(test::mpirun_command(2) + test::kiln_binary() + " " +
                        train_args(dir / "bad4") + " parallel.ep=3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("parallel.ep = 3 must divide the data-parallel size 2"),
            std::string::npos)
      << r.output;
  r = test::run_command(test::mpirun_command(2) + test::kiln_binary() + " " +
                        train_args(dir / "bad5") + " parallel.ep=2 model.num_local_experts=3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("parallel.ep = 2 does not divide num_local_experts = 3"),
            std::string::npos)
      << r.output;
  // A checkpoint missing an expert: the tensor is named.
  const std::string run = dir / "run";
  r = kiln(train_args(run) + " train.steps=1 train.checkpoint_every=1");
  ASSERT_EQ(r.status, 0) << r.output;
  // As a Hugging Face checkpoint would come: config.json, model.safetensors, tokenizer.json.
  const std::string from = run + "/checkpoints/step_00000001", ckpt = dir / "hf";
  std::filesystem::create_directories(ckpt);
  for (const char* f : {"config.json", "tokenizer.json"})
    std::filesystem::copy_file(from + "/" + f, ckpt + "/" + f);
  r = test::run_command("/usr/bin/python3 -c \"import sys; sys.path.insert(0, '" +
                        test::source_dir() +
                        "/scripts'); import torch_model as tm; t = tm.load_file('" + from +
                        "/model.safetensors'); "
                        "del t['model.layers.1.block_sparse_moe.experts.3.w2.weight']; "
                        "tm.save_file(t, '" +
                        ckpt + "/model.safetensors')\"");
  ASSERT_EQ(r.status, 0) << r.output;
  r = kiln("generate --model " + ckpt + " --prompt 'the cat' --max-new-tokens 2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("model.layers.1.block_sparse_moe.experts.3.w2.weight"),
            std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace kiln

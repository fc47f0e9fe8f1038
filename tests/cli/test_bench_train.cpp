// `kiln bench train` times kiln::train itself (cmd_bench.cpp): for the same model, batch and seed
// it reports exactly the losses `kiln train` writes for a data.mock config at a constant
// learning rate — with no layout flag (before, that path ran a loop of its own, with other data
// and no clipping, and reported other losses) and with one. Its FLOPs are train/estimate's.
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/io/file.h"
#include "kiln/model/config.h"
#include "kiln/train/estimate.h"
#include "test_util.h"

namespace kiln {
namespace {

constexpr const char* kModel =
    R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 300, "max_position_embeddings": 64})";

// The one JSON line `kiln bench train` prints (stdout; the trainer logs on stderr).
nlohmann::json bench(const test::TempDir& dir, const std::string& flags) {
  const std::string cmd = test::kiln_binary() + " bench train --model-config " +
                          (dir / "config.json") +
                          " --batch 4 --seq 16 --warmup 1 --steps 3 --seed 5 --lr 1e-2 "
                          "--threads 1 " +
                          flags + " 2>" + (dir / "stderr.txt");
  auto r = test::run_command(cmd);
  EXPECT_EQ(r.status, 0) << cmd << "\n" << r.output << read_file(dir / "stderr.txt");
  std::istringstream in(r.output);
  std::string line, json;
  while (std::getline(in, line))
    if (line.rfind("{", 0) == 0) json = line;
  return json.empty() ? nlohmann::json::object() : nlohmann::json::parse(json);
}

TEST(BenchTrain, ReportsTheTrainersLossesAndTheEstimatesFlops) {
  test::TempDir dir("bench-train");
  write_file_atomic(dir / "config.json", kModel);
  write_file_atomic(dir / "t.yaml",
                    std::string("seed: 5\nmodel: ") + kModel +
                        "\ndata: {mock: true}\n"
                        "train: {steps: 4, batch_size: 4, seq_len: 16, "
                        "eval_every: 0, checkpoint_every: 0, "
                        "final_checkpoint: false, samples: 0}\n"
                        "optim: {lr: 1.0e-2, warmup_steps: 0, schedule: constant}\n");
  auto r = test::run_command(test::kiln_binary() + " train " + (dir / "t.yaml") +
                             " --threads 1 run_dir=" + (dir / "run"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<double> trained;
  std::istringstream in(read_file(dir / "run/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) trained.push_back(nlohmann::json::parse(line)["loss"]);
  ASSERT_EQ(trained.size(), 4u);

  for (const char* flags : {"", "--zero 0"}) {
    SCOPED_TRACE(std::string("bench train ") + flags);
    const nlohmann::json b = bench(dir, flags);
    ASSERT_EQ(b["losses"].size(), 4u);
    for (size_t i = 0; i < 4; ++i)
      EXPECT_EQ(b["losses"][i].get<double>(), trained[i]) << "step " << i + 1;  // bit for bit
  }

  // GFLOP/s = the estimate's FLOPs per step over the median step time.
  const nlohmann::json b = bench(dir, "--recompute selective");
  const ModelConfig cfg = load_model_config(dir / "config.json");
  const double flops =
      step_flops(cfg, double(cfg.num_params()), 4, 16, Recompute::selective).total();
  EXPECT_DOUBLE_EQ(b["gflops"].get<double>(),
                   flops / (b["step_ms_median"].get<double>() / 1e3) / 1e9);
}

}  // namespace
}  // namespace kiln

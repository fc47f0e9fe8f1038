// Tensor (and sequence) parallelism through the real launcher: `mpirun -np N kiln train` with
// parallel.tp must give the single-process loss curve and, gathered by rank 0, one Hugging Face
// checkpoint with the single-process weights. The differences are the order of sums: the
// row-parallel partial outputs, the LM head's row statistics and (with dp) the gradients are
// summed over ranks in fp32, so losses agree to 1e-5 relative (measured: ~2e-8) and the final
// weights to 1e-4 of each tensor's largest magnitude (GPT-2's key bias aside, see below). The byte
// vocabulary (257 tokens) splits unevenly over 2 ranks, and the Llama model has grouped-query
// attention and an untied LM head.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/train_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {

std::map<int64_t, double> losses(const std::string& run) {
  std::map<int64_t, double> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// Every step of `b` has the loss of the same step of `a` (b may start later: a resume).
void expect_same_losses(const std::string& a_run, const std::string& b_run, const std::string& what,
                        size_t steps) {
  auto a = losses(a_run), b = losses(b_run);
  ASSERT_EQ(b.size(), steps) << what;
  for (auto [step, loss] : b) {
    ASSERT_TRUE(a.count(step)) << what << " step " << step;
    EXPECT_NEAR(loss, a[step], 1e-5 * a[step]) << what << " step " << step;
  }
}

void expect_same_weights(const std::string& a_ckpt, const std::string& b_ckpt,
                         const std::string& what) {
  EXPECT_EQ(nlohmann::json::parse(read_file(a_ckpt + "/config.json")),
            nlohmann::json::parse(read_file(b_ckpt + "/config.json")))
      << what;
  auto wa = load_safetensors(a_ckpt + "/model.safetensors");
  auto wb = load_safetensors(b_ckpt + "/model.safetensors");
  ASSERT_EQ(wa.names.size(), wb.names.size()) << what;
  for (const auto& name : wa.names) {
    const Tensor &x = wa.get(name), &y = wb.get(name);
    ASSERT_EQ(x.shape(), y.shape()) << name << " " << what;
    // GPT-2's key bias has an exactly zero gradient (it adds the same q.b to every score of a
    // row, which softmax ignores): it moves by rounding noise only, which AdamW scales up to
    // lr-sized steps, so it is compared for staying at noise level rather than bit by bit.
    const bool key_bias = name.find("attn.c_attn.bias") != std::string::npos;
    const int64_t k0 = key_bias ? x.numel() / 3 : 0, k1 = key_bias ? 2 * x.numel() / 3 : 0;
    double scale = 1e-30, diff = 0, noise = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      scale = std::max(scale, double(std::fabs(x.f32()[i])));
      if (i >= k0 && i < k1) {
        noise = std::max({noise, double(std::fabs(x.f32()[i])), double(std::fabs(y.f32()[i]))});
      } else {
        diff = std::max(diff, double(std::fabs(x.f32()[i] - y.f32()[i])));
      }
    }
    EXPECT_LE(diff, 1e-4 * scale) << name << " " << what;
    EXPECT_LE(noise, 1e-3 * scale) << name << " " << what;
  }
}

class TrainTensorParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(test::run_command("command -v mpirun").status, 0)
        << "mpirun not found: install Open MPI with scripts/setup.sh";
    write_file_atomic(dir_ / "c.txt", test::word_corpus());
    const std::string rest = "data: {train: [" + (dir_ / "c.txt") +
                             "], val_fraction: 0.05}\n"
                             "train: {steps: 8, batch_size: 4, seq_len: 32, eval_every: 4, "
                             "eval_batches: 2, checkpoint_every: 4, samples: 0}\n"
                             "optim: {lr: 3.0e-3, warmup_steps: 2}\n";
    write_file_atomic(dir_ / "llama.yaml",
                      "seed: 3\n"
                      "model: {architectures: [LlamaForCausalLM], hidden_size: 32, "
                      "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
                      "num_key_value_heads: 2, max_position_embeddings: 64}\n" +
                          rest);
    write_file_atomic(dir_ / "gpt2.yaml",
                      "seed: 3\n"
                      "model: {architectures: [GPT2LMHeadModel], n_embd: 32, n_inner: 64, "
                      "n_layer: 2, n_head: 4, n_positions: 64}\n" +
                          rest);
  }

  std::string kiln(const std::string& cfg) const {
    return test::kiln_binary() + " train " + (dir_ / cfg) + " --threads 1";
  }
  test::CommandResult mpirun(int np, const std::string& args) const {
    return test::run_command(test::mpirun_command(np, 180) + args);
  }
  static std::string ckpt(const std::string& run, int step) {
    char name[32];
    std::snprintf(name, sizeof name, "/checkpoints/step_%08d", step);
    return run + name;
  }

  test::TempDir dir_{"train-tp"};
};

TEST_F(TrainTensorParallel, MatchesOneProcess) {
  for (std::string arch : {"llama", "gpt2"}) {
    const std::string cfg = arch + ".yaml", one = dir_ / (arch + "-one");
    auto r = test::run_command(kiln(cfg) + " run_dir=" + one);
    ASSERT_EQ(r.status, 0) << r.output;
    struct Layout {
      int np;
      std::string name, args;
    };
    std::vector<Layout> layouts = {
        {2, "tp2", "parallel.tp=2"},
        {2, "tp2-sp", "parallel.tp=2 parallel.sequence_parallel=true"},
        {4, "dp2-tp2", "parallel.tp=2"},
    };
    if (arch == "gpt2") layouts = {{4, "tp4-sp", "parallel.tp=4 parallel.sequence_parallel=true"}};
    for (const Layout& l : layouts) {
      const std::string run = dir_ / (arch + "-" + l.name), what = arch + " " + l.name;
      r = mpirun(l.np, kiln(cfg) + " " + l.args + " run_dir=" + run);
      ASSERT_EQ(r.status, 0) << what << "\n" << r.output;
      expect_same_losses(one, run, what, 8);
      expect_same_weights(ckpt(one, 8), ckpt(run, 8), what);
    }
  }
  // The gathered checkpoint is an ordinary model directory: kiln eval reads it unchanged.
  auto a = test::run_command(test::kiln_binary() + " eval --model " + ckpt(dir_ / "llama-one", 8) +
                             " --text " + (dir_ / "c.txt") + " --threads 1");
  auto b = test::run_command(test::kiln_binary() + " eval --model " + ckpt(dir_ / "llama-tp2", 8) +
                             " --text " + (dir_ / "c.txt") + " --threads 1");
  ASSERT_EQ(a.status, 0) << a.output;
  ASSERT_EQ(b.status, 0) << b.output;
  auto la = nlohmann::json::parse(a.output.substr(a.output.rfind('{')))["loss"].get<double>();
  auto lb = nlohmann::json::parse(b.output.substr(b.output.rfind('{')))["loss"].get<double>();
  EXPECT_NEAR(la, lb, 1e-5 * la);
}

TEST_F(TrainTensorParallel, ResumesFromTensorParallelCheckpoint) {
  const std::string one = dir_ / "one", tp = dir_ / "tp2", res = dir_ / "resumed";
  auto r = test::run_command(kiln("llama.yaml") + " run_dir=" + one);
  ASSERT_EQ(r.status, 0) << r.output;
  r = mpirun(2, kiln("llama.yaml") + " parallel.tp=2 run_dir=" + tp);
  ASSERT_EQ(r.status, 0) << r.output;
  // A run directory holding only the tp=2 run's step-4 checkpoint, resumed with sequence
  // parallelism on: steps 5..8 must continue the single-process curve.
  std::filesystem::create_directories(res + "/checkpoints");
  std::filesystem::copy(ckpt(tp, 4), ckpt(res, 4), std::filesystem::copy_options::recursive);
  r = mpirun(2, kiln("llama.yaml") +
                    " parallel.tp=2 parallel.sequence_parallel=true run_dir=" + res + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  expect_same_losses(one, res, "resumed", 4);
  expect_same_weights(ckpt(one, 8), ckpt(res, 8), "resumed");
}

TEST_F(TrainTensorParallel, RefusesBadLayouts) {
  // 4 heads do not split over 3 ranks: refused with the fix, before any training.
  auto r = mpirun(3, kiln("llama.yaml") + " parallel.tp=3 run_dir=" + (dir_ / "bad3"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("num_attention_heads = 4 is not divisible by parallel.tp = 3"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("use a tp that divides 4"), std::string::npos) << r.output;
  // 2 kv heads do not split over 4 ranks (grouped-query attention).
  r = mpirun(4, kiln("llama.yaml") + " parallel.tp=4 run_dir=" + (dir_ / "bad4"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("num_key_value_heads = 2 is not divisible by parallel.tp = 4"),
            std::string::npos)
      << r.output;
  // 3 processes do not form tp groups of 2.
  r = mpirun(3, kiln("llama.yaml") + " parallel.tp=2 run_dir=" + (dir_ / "bad-world"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("world size 3 is not divisible by tp*pp"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln

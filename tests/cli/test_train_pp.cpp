// Pipeline-parallel training through the real launcher: `mpirun -np N kiln train` with
// parallel.pp stages (GPipe and 1F1B, alone and with data parallelism, with tied embeddings) must
// give the single-process loss curve at the same global batch and grad_accum. Untied, every
// stage's gradient sums in the single-process order (backwards in micro-batch order); what
// differs is the fp32 all-reduce of the loss and of the clipping norm's sum of squares, the tied
// embedding's two stage parts, and, with dp, the all-reduce of the gradients. Losses agree to
// 1e-5 relative and final weights to 1e-4 of each tensor's largest magnitude; a resumed pipeline
// run continues the uninterrupted one exactly, and one process resumes its checkpoint as well.
// Pipelines of tensor-parallel shards (tp x pp) hold to the same tolerances, and their checkpoint
// resumes under another layout (data parallel with ZeRO) with the same next losses.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/train_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {

// Largest |a - b| over each tensor, relative to the tensor's largest |a|.
void expect_same_weights(const std::string& a_run, const std::string& b_run, double tol,
                         const std::string& what) {
  const std::string ckpt = "/checkpoints/step_00000008/model.safetensors";
  auto wa = load_safetensors(a_run + ckpt);
  auto wb = load_safetensors(b_run + ckpt);
  ASSERT_EQ(wa.names.size(), wb.names.size()) << what;
  for (const auto& name : wa.names) {
    const Tensor &x = wa.get(name), &y = wb.get(name);
    ASSERT_EQ(x.numel(), y.numel()) << name;
    double scale = 1e-30, diff = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      scale = std::max(scale, double(std::fabs(x.f32()[i])));
      diff = std::max(diff, double(std::fabs(x.f32()[i] - y.f32()[i])));
    }
    EXPECT_LE(diff, tol * scale) << name << " in " << what;
  }
}

void expect_same_losses(const std::string& a_run, const std::string& b_run, double tol,
                        const std::string& what) {
  auto a = test::run_losses(a_run), b = test::run_losses(b_run);
  ASSERT_EQ(a.size(), 8u) << what;
  ASSERT_EQ(b.size(), a.size()) << what;
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_NEAR(b[i], a[i], tol * a[i]) << what << " step " << i + 1;
}

class TrainPipeline : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(test::run_command("command -v mpirun").status, 0)
        << "mpirun not found: install Open MPI with scripts/setup.sh";
    write_file_atomic(dir / "c.txt", test::word_corpus());
    const std::string rest =
        "data: {train: [" + (dir / "c.txt") +
        "], val_fraction: 0.05}\n"
        "train: {steps: 8, batch_size: 4, grad_accum: 4, seq_len: 32, eval_every: 4, "
        "eval_batches: 2, checkpoint_every: 4, keep_checkpoints: 0, samples: 0}\n"
        "optim: {lr: 3.0e-3, warmup_steps: 2, grad_clip: 0.5}\n";
    // Llama, 4 layers; grad_clip low enough that clipping acts (the norm is over all stages).
    write_file_atomic(
        dir / "llama.yaml",
        "seed: 3\n"
        "model: {architectures: [LlamaForCausalLM], hidden_size: 32, intermediate_size: 64, "
        "num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 64}\n" +
            rest);
    // GPT-2 ties its LM head to the token embedding: first and last stage each hold it.
    write_file_atomic(dir / "gpt2.yaml",
                      "seed: 5\n"
                      "model: {architectures: [GPT2LMHeadModel], n_embd: 32, n_layer: 3, "
                      "n_head: 4, n_positions: 64}\n" +
                          rest);
  }

  std::string kiln(const std::string& yaml) const {
    return test::kiln_binary() + " train " + (dir / yaml) + " --threads 1";
  }
  test::CommandResult mpirun(int np, const std::string& args) const {
    return test::run_command(test::mpirun_command(np, 180) + args);
  }

  test::TempDir dir{"train-pp"};
};

TEST_F(TrainPipeline, SchedulesMatchOneProcess) {
  auto one = test::run_command(kiln("llama.yaml") + " run_dir=" + (dir / "one"));
  ASSERT_EQ(one.status, 0) << one.output;
  struct Layout {
    int np, pp;
    const char* schedule;
  };
  for (Layout l :
       {Layout{2, 2, "gpipe"}, Layout{2, 2, "1f1b"}, Layout{4, 2, "1f1b"}, Layout{4, 4, "1f1b"}}) {
    const std::string what = "np " + std::to_string(l.np) + " pp " + std::to_string(l.pp) + " " +
                             l.schedule,
                      run = dir / ("np" + std::to_string(l.np) + "pp" + std::to_string(l.pp) +
                                   l.schedule);
    auto r = mpirun(l.np, kiln("llama.yaml") + " run_dir=" + run + " parallel.pp=" +
                              std::to_string(l.pp) + " parallel.schedule=" + l.schedule);
    ASSERT_EQ(r.status, 0) << what << "\n" << r.output;
    expect_same_losses(dir / "one", run, 1e-5, what);
    expect_same_weights(dir / "one", run, 1e-4, what);
  }
  // Resume the 2-stage 1F1B run from its step-4 checkpoint: steps 5-8 and the final weights
  // come out as in the uninterrupted run (scatter and gather are exact copies).
  const std::string full = dir / "np2pp21f1b", resumed = dir / "resumed";
  std::filesystem::copy(full, resumed, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(resumed + "/checkpoints/step_00000008");
  auto r = mpirun(2, kiln("llama.yaml") + " run_dir=" + resumed +
                         " parallel.pp=2 parallel.schedule=1f1b --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  expect_same_losses(full, resumed, 0, "resumed");
  expect_same_weights(full, resumed, 0, "resumed");
  // The checkpoint is an ordinary one: a single process resumes it too.
  const std::string single = dir / "resumed_single";
  std::filesystem::copy(full, single, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(single + "/checkpoints/step_00000008");
  auto s = test::run_command(kiln("llama.yaml") + " run_dir=" + single + " --resume");
  ASSERT_EQ(s.status, 0) << s.output;
  expect_same_losses(dir / "one", single, 1e-5, "resumed in one process");
  expect_same_weights(dir / "one", single, 1e-4, "resumed in one process");
}

TEST_F(TrainPipeline, TiedEmbeddingsMatchOneProcess) {
  auto one = test::run_command(kiln("gpt2.yaml") + " run_dir=" + (dir / "one"));
  ASSERT_EQ(one.status, 0) << one.output;
  for (const char* schedule : {"gpipe", "1f1b"}) {
    const std::string run = dir / schedule;
    auto r = mpirun(
        3, kiln("gpt2.yaml") + " run_dir=" + run + " parallel.pp=3 parallel.schedule=" + schedule);
    ASSERT_EQ(r.status, 0) << r.output;
    expect_same_losses(dir / "one", run, 1e-5, schedule);
    expect_same_weights(dir / "one", run, 1e-4, schedule);
  }
}

TEST_F(TrainPipeline, TensorParallelStagesMatchOneProcess) {
  for (const char* yaml : {"llama.yaml", "gpt2.yaml"}) {
    const std::string one = dir / (std::string("one_") + yaml);
    auto o = test::run_command(kiln(yaml) + " run_dir=" + one);
    ASSERT_EQ(o.status, 0) << o.output;
    // GPipe with sequence parallelism (stages exchange their rows of the residual stream).
    for (const char* schedule : {"gpipe", "1f1b"}) {
      const bool sp = schedule == std::string("gpipe");
      const std::string what = std::string(yaml) + " tp 2 x pp 2 " + schedule + (sp ? " sp" : ""),
                        run = dir / (std::string("tp2pp2_") + schedule + "_" + yaml);
      auto r = mpirun(4, kiln(yaml) + " run_dir=" + run +
                             " parallel.tp=2 parallel.pp=2 parallel.schedule=" + schedule +
                             " parallel.sequence_parallel=" + (sp ? "true" : "false"));
      ASSERT_EQ(r.status, 0) << what << "\n" << r.output;
      expect_same_losses(one, run, 1e-5, what);
      expect_same_weights(one, run, 1e-4, what);
    }
  }
  // Save at tp 2 x pp 2, resume at dp 4 with ZeRO-1: steps 5-8 as in one process.
  const std::string relayout = dir / "relayout";
  std::filesystem::copy(dir / "tp2pp2_1f1b_llama.yaml", relayout,
                        std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(relayout + "/checkpoints/step_00000008");
  auto r = mpirun(4, kiln("llama.yaml") + " run_dir=" + relayout + " parallel.zero=1 --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  expect_same_losses(dir / "one_llama.yaml", relayout, 1e-5, "tp2 x pp2 resumed at dp 4");
  expect_same_weights(dir / "one_llama.yaml", relayout, 1e-4, "tp2 x pp2 resumed at dp 4");
}

// parallel.checkpoint = sharded: every rank writes what it owns, and any layout reads it back.
TEST_F(TrainPipeline, ShardedCheckpointsResumeUnderAnotherLayout) {
  const std::string one = dir / "one";
  ASSERT_EQ(test::run_command(kiln("llama.yaml") + " run_dir=" + one).status, 0);
  const std::string sharded = dir / "sharded";
  auto r = mpirun(4, kiln("llama.yaml") + " run_dir=" + sharded +
                         " parallel.tp=2 parallel.pp=2 parallel.checkpoint=sharded");
  ASSERT_EQ(r.status, 0) << r.output;
  expect_same_losses(one, sharded, 1e-5, "tp2 x pp2, sharded checkpoints");
  const std::string step4 = sharded + "/checkpoints/step_00000004";
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_TRUE(file_exists(step4 + "/shard_0000" + std::to_string(rank) + ".safetensors"));
  EXPECT_FALSE(file_exists(step4 + "/model.safetensors"));
  // kiln eval reads a sharded checkpoint as it reads a gathered one.
  auto eval = [&](const std::string& model) {
    auto e = test::run_command(test::kiln_binary() + " eval --model " + model + " --text " +
                               (dir / "c.txt") + " --threads 1");
    EXPECT_EQ(e.status, 0) << e.output;
    return nlohmann::json::parse(e.output.substr(e.output.rfind('{')))["loss"].get<double>();
  };
  const double gathered = eval(one + "/checkpoints/step_00000008"),
               from_shards = eval(sharded + "/checkpoints/step_00000008");
  EXPECT_NEAR(from_shards, gathered, 1e-5 * gathered);
  // Resume its step 4 at dp 4 with ZeRO-3 (sharded again, at steps 6 and 8), then that run's
  // step 6 in one process.
  const std::string zero3 = dir / "zero3";
  std::filesystem::copy(sharded, zero3, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(zero3 + "/checkpoints/step_00000008");
  r = mpirun(4,
             kiln("llama.yaml") + " run_dir=" + zero3 +
                 " parallel.zero=3 parallel.checkpoint=sharded train.checkpoint_every=2 --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  expect_same_losses(one, zero3, 1e-5, "tp2 x pp2 sharded, resumed at dp 4 zero 3");
  EXPECT_TRUE(file_exists(zero3 + "/checkpoints/step_00000006/manifest.json"));
  const std::string single = dir / "single";
  std::filesystem::copy(zero3, single, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(single + "/checkpoints/step_00000008");
  auto s = test::run_command(kiln("llama.yaml") + " run_dir=" + single + " --resume");
  ASSERT_EQ(s.status, 0) << s.output;
  EXPECT_NE(s.output.find("resumed from " + single + "/checkpoints/step_00000006"),
            std::string::npos)
      << s.output;
  expect_same_losses(one, single, 1e-5, "zero 3 sharded, resumed in one process");
  expect_same_weights(one, single, 1e-4, "zero 3 sharded, resumed in one process");
  // A shard gone from the checkpoint is named.
  std::filesystem::remove(step4 + "/shard_00002.safetensors");
  std::filesystem::remove_all(sharded + "/checkpoints/step_00000008");
  auto bad = test::run_command(kiln("llama.yaml") + " run_dir=" + sharded + " --resume");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("shard_00002.safetensors is listed in manifest.json but missing"),
            std::string::npos)
      << bad.output;
}

// ZeRO with tensor and pipeline parallelism: over a pipeline stage ZeRO-1 (the part's moments
// sharded over dp); over a tensor-parallel shard every stage, the norm summed over tp.
TEST_F(TrainPipeline, ZeroWithTensorAndPipelineMatchesOneProcess) {
  const std::string one = dir / "one";
  ASSERT_EQ(test::run_command(kiln("llama.yaml") + " run_dir=" + one).status, 0);
  struct Layout {
    const char *name, *args;
  };
  for (Layout l :
       {Layout{"zero1_pp", "parallel.zero=1 parallel.pp=2"},
        Layout{"zero1_tp", "parallel.zero=1 parallel.tp=2"},
        Layout{"zero3_tp_sp", "parallel.zero=3 parallel.tp=2 parallel.sequence_parallel=true"},
        Layout{"zero2_tp_sharded", "parallel.zero=2 parallel.tp=2 parallel.checkpoint=sharded"}}) {
    const std::string run = dir / l.name;
    auto r = mpirun(4, kiln("llama.yaml") + " run_dir=" + run + " " + l.args);
    ASSERT_EQ(r.status, 0) << l.name << "\n" << r.output;
    expect_same_losses(one, run, 1e-5, l.name);
    if (std::string(l.name).find("sharded") == std::string::npos)
      expect_same_weights(one, run, 1e-4, l.name);
  }
  // Their checkpoints resume: the moments gathered back from the dp ranks, and a sharded one
  // (ZeRO-2 shards of tensor-parallel shards) in one process.
  const std::string resumed = dir / "zero1_resumed";
  std::filesystem::copy(dir / "zero1_pp", resumed, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(resumed + "/checkpoints/step_00000008");
  auto r = mpirun(
      4, kiln("llama.yaml") + " run_dir=" + resumed + " parallel.zero=1 parallel.pp=2 --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  expect_same_losses(dir / "zero1_pp", resumed, 0, "zero 1 x pp 2 resumed");
  const std::string single = dir / "zero2_single";
  std::filesystem::copy(dir / "zero2_tp_sharded", single, std::filesystem::copy_options::recursive);
  std::filesystem::remove_all(single + "/checkpoints/step_00000008");
  auto s = test::run_command(kiln("llama.yaml") + " run_dir=" + single + " --resume");
  ASSERT_EQ(s.status, 0) << s.output;
  expect_same_losses(one, single, 1e-5, "zero 2 x tp 2 sharded, resumed in one process");
  expect_same_weights(one, single, 1e-4, "zero 2 x tp 2 sharded, resumed in one process");
}

TEST_F(TrainPipeline, UnsupportedCombinationsAreRefused) {
  auto z =
      mpirun(2, kiln("llama.yaml") + " run_dir=" + (dir / "z") + " parallel.pp=2 parallel.zero=2");
  EXPECT_NE(z.status, 0);
  EXPECT_NE(z.output.find("use parallel.zero = 1"), std::string::npos) << z.output;
}

TEST_F(TrainPipeline, MoreStagesThanLayersIsRefused) {
  auto r = mpirun(4, kiln("gpt2.yaml") + " run_dir=" + (dir / "bad") + " parallel.pp=4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("the model has 3 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("use parallel.pp <= 3"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln

// Failures in a multi-rank job: ranks started with different configurations are refused at
// start-up; a rank that hangs (SIGSTOP) makes the others give up after parallel.timeout_s with a
// message naming the rank and the collective; a rank that dies (SIGKILL) ends the job. In every
// case mpirun exits non-zero and no kiln process of the job is left behind.
#include <gtest/gtest.h>

#include <chrono>

#include "cli/train_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln {
namespace {

class TrainFault : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(test::run_command("command -v mpirun").status, 0)
        << "mpirun not found: install Open MPI with scripts/setup.sh";
    write_file_atomic(dir_ / "c.txt", test::word_corpus());
    write_file_atomic(
        dir_ / "t.yaml",
        "seed: 3\n"
        "model: {architectures: [LlamaForCausalLM], hidden_size: 32, intermediate_size: 64, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 64}\n"
        "data: {train: [" +
            (dir_ / "c.txt") +
            "], val_fraction: 0.05}\n"
            "train: {steps: 100000, batch_size: 4, seq_len: 32, eval_every: 0, "
            "checkpoint_every: 0, samples: 0}\n");
  }

  // Starts a long 2-rank run, waits for its first metrics, sends `signal` to rank 1, and returns
  // mpirun's output and status, the seconds from the signal to mpirun's exit, and how many kiln
  // processes of the run are alive 10 s after that.
  // Shell: the pids of the kiln processes whose command line has run_dir=RUN.
  static std::string job_pids(const std::string& run) {
    return "for p in $(pgrep -x kiln); do grep -qa 'run_dir=" + run +
           "' /proc/$p/cmdline 2>/dev/null && echo $p; done";
  }

  struct Outcome {
    test::CommandResult run;
    double seconds;
    int left;
  };
  Outcome signal_rank1(const std::string& name, const std::string& signal, double timeout_s) {
    const std::string run = dir_ / name;
    const std::string script =
        "(" + test::mpirun_command(2, 300) + test::kiln_binary() + " train " + (dir_ / "t.yaml") +
        " --threads 1 run_dir=" + run + " parallel.timeout_s=" + std::to_string(timeout_s) + " > " +
        run + ".log 2>&1; echo $? > " + run +
        ".rc) &\n"
        "for i in $(seq 1 600); do [ -s " +
        run +
        "/metrics.jsonl ] && break; sleep 0.1; done\n"
        "for p in $(" +
        job_pids(run) +
        "); do\n"
        "  tr '\\0' '\\n' < /proc/$p/environ | grep -qx OMPI_COMM_WORLD_RANK=1 && kill -" +
        signal +
        " $p\n"
        "done\n"
        "wait\n";
    auto t0 = std::chrono::steady_clock::now();
    auto r = test::run_command(script);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.status, 0) << r.output;
    int left = -1;
    for (int i = 0; i < 100 && left != 0; ++i) {
      auto ps = test::run_command("sleep 0.1; (" + job_pids(run) + ") | wc -l");
      left = std::stoi(ps.output);
    }
    return {{std::stoi(read_file(run + ".rc")), read_file(run + ".log")}, seconds, left};
  }

  test::TempDir dir_{"train-fault"};
};

TEST_F(TrainFault, DifferentConfigsAreRefusedAtStartup) {
  const std::string kiln = test::kiln_binary() + " train " + (dir_ / "t.yaml") +
                           " --threads 1 train.steps=2 run_dir=" + (dir_ / "mismatch");
  auto r = test::run_command(test::mpirun_command(1, 120) + kiln + " : -np 1 " + kiln +
                             " optim.lr=1e-4");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("[rank 0] [train] rank(s) 1 were started with a different "
                          "configuration than rank 0"),
            std::string::npos)
      << r.output;
}

TEST_F(TrainFault, HungRankEndsTheJobWithinTheTimeout) {
  auto o = signal_rank1("hung", "STOP", 3);
  EXPECT_NE(o.run.status, 0) << o.run.output;
  EXPECT_NE(o.run.output.find("rank 0: MPI_I"), std::string::npos) << o.run.output;
  EXPECT_NE(o.run.output.find("got no answer for 3 s (parallel.timeout_s = 3) from world "
                              "rank(s) 1: one of them died"),
            std::string::npos)
      << o.run.output;
  EXPECT_LT(o.seconds, 60) << "the job outlived its 3 s timeout by far";
  EXPECT_EQ(o.left, 0) << "kiln processes left behind";
}

TEST_F(TrainFault, KilledRankEndsTheJob) {
  auto o = signal_rank1("killed", "KILL", 300);
  EXPECT_NE(o.run.status, 0) << o.run.output;
  EXPECT_NE(o.run.output.find("rank 1"), std::string::npos) << o.run.output;
  EXPECT_LT(o.seconds, 60) << "a dead rank must end the job long before the 300 s timeout";
  EXPECT_EQ(o.left, 0) << "kiln processes left behind";
}

}  // namespace
}  // namespace kiln

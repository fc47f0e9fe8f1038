// Data-parallel training through the real launcher: `mpirun -np N kiln train` must give the
// single-process loss curve (the same global batch, split over ranks, gradients summed). The
// only difference is the order of the sums across ranks (fp32 all-reduce of the loss and the
// gradients), so losses agree to 1e-5 relative (measured: ~1e-7) and the final weights to 1e-4 of
// each tensor's largest magnitude.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/train_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/io/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(TrainDataParallel, MatchesOneProcess) {
  ASSERT_EQ(test::run_command("command -v mpirun").status, 0)
      << "mpirun not found: install Open MPI with scripts/setup.sh";
  test::TempDir dir("train-dp");
  write_file_atomic(dir / "c.txt", test::word_corpus());
  write_file_atomic(
      dir / "t.yaml",
      "seed: 3\n"
      "model: {architectures: [LlamaForCausalLM], hidden_size: 32, intermediate_size: 64, "
      "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
      "max_position_embeddings: 64}\n"
      "data: {train: [" +
          (dir / "c.txt") +
          "], val_fraction: 0.05}\n"
          "train: {steps: 8, batch_size: 4, seq_len: 32, eval_every: 4, eval_batches: 2, "
          "checkpoint_every: 8, samples: 0}\n"
          "optim: {lr: 3.0e-3, warmup_steps: 2}\n");
  const std::string kiln = test::kiln_binary() + " train " + (dir / "t.yaml") + " --threads 1";
  auto one = test::run_command(kiln + " run_dir=" + (dir / "one"));
  ASSERT_EQ(one.status, 0) << one.output;
  for (int np : {2, 4}) {
    const std::string run = dir / ("dp" + std::to_string(np));
    auto r = test::run_command(test::mpirun_command(np, 120) + kiln + " run_dir=" + run);
    ASSERT_EQ(r.status, 0) << r.output;
    auto a = test::run_losses(dir / "one"), b = test::run_losses(run);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-5 * a[i]) << "step " << i + 1;
    auto wa = load_safetensors(dir / "one" + "/checkpoints/step_00000008/model.safetensors");
    auto wb = load_safetensors(run + "/checkpoints/step_00000008/model.safetensors");
    for (const auto& name : wa.names) {
      const Tensor &x = wa.get(name), &y = wb.get(name);
      double scale = 1e-30, diff = 0;
      for (int64_t i = 0; i < x.numel(); ++i) {
        scale = std::max(scale, double(std::fabs(x.f32()[i])));
        diff = std::max(diff, double(std::fabs(x.f32()[i] - y.f32()[i])));
      }
      EXPECT_LE(diff, 1e-4 * scale) << name << " at dp=" << np;
    }
  }
  // A batch that does not split evenly is refused with the fix.
  auto bad = test::run_command(test::mpirun_command(3, 60) + kiln + " run_dir=" + (dir / "bad"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("not divisible by the 3 data-parallel ranks"), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace kiln

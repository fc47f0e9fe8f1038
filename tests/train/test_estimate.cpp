// kiln estimate: the seed notes' 7B arithmetic, the ZeRO / tp / recompute formulas, suggest's
// ranking, bad layouts, and the measured-peak oracle for kiln's own CPU trainer: the estimate of
// its fp32 training memory is checked against (a) the bytes the real objects allocate and (b) the
// peak RSS growth of a child process that builds them and runs one training step, within 15%.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/transformer.h"
#include "kiln/train/estimate.h"
#include "kiln/train/optimizer.h"

namespace kiln {
namespace {

using P = EstimateInput::Precision;
using R = EstimateInput::Recompute;
constexpr double kGiB = double(1ull << 30);

EstimateInput seven_b(int gpus = 8) {
  EstimateInput in;
  in.model = estimate_model("7b");
  in.gpus = gpus;
  in.dp = gpus;
  in.gpu_memory = 80 * kGiB;
  in.micro_batch = 1;
  in.seq = 2048;
  return in;
}

// The seed notes (seeds/002): 2 + 4 + 2 = 8 bytes/param -> 7B = 56e9 bytes = 52 GiB;
// 6·N·D with D = 20·N = 5.88e21 FLOPs -> 1.88e7 s = 218 days on one A100 at 312 TFLOP/s.
TEST(Estimate, SeedNotes7B) {
  EstimateInput in = seven_b(1);
  in.params_override = 7'000'000'000;
  in.accounting = EstimateInput::Accounting::seed;
  in.gpu_memory = 40 * kGiB;
  in.peak_tflops = 312;
  in.mfu = 1.0;
  in.recompute = R::none;
  Estimate e = estimate(in);
  EXPECT_EQ(e.params, 7'000'000'000);
  EXPECT_DOUBLE_EQ(e.in.tokens, 1.4e11);  // D = 20·N
  EXPECT_DOUBLE_EQ(e.memory.states(), 56e9);
  EXPECT_EQ(std::lround(e.memory.states() / kGiB), 52);
  EXPECT_NEAR(6.0 * double(e.params) * e.in.tokens, 5.88e21, 1e15);
  EXPECT_NEAR(e.run_seconds_6nd, 1.8846e7, 1e3);
  EXPECT_EQ(std::lround(e.run_seconds_6nd / 86400), 218);
  EXPECT_FALSE(e.fits);  // the seeds' point: it does not fit one 40 GiB A100

  // Standard mixed-precision Adam: 2 + 2 + 12 = 16 bytes/param.
  in.accounting = EstimateInput::Accounting::standard;
  in.precision = P::bf16;
  e = estimate(in);
  EXPECT_DOUBLE_EQ(e.memory.weights, 14e9);
  EXPECT_DOUBLE_EQ(e.memory.grads, 14e9);
  EXPECT_DOUBLE_EQ(e.memory.optimizer, 84e9);
  EXPECT_DOUBLE_EQ(e.memory.states(), 112e9);
  // fp32 training: 4 + 4 + 8 = 16 bytes/param too, but no 16-bit copy.
  in.precision = P::fp32;
  e = estimate(in);
  EXPECT_DOUBLE_EQ(e.memory.weights, 28e9);
  EXPECT_DOUBLE_EQ(e.memory.optimizer, 56e9);
}

// The named sizes count exactly as Hugging Face's Llama 2 checkpoints do.
TEST(Estimate, ParamsEqualModelConfig) {
  EXPECT_EQ(estimate_model("7b").num_params(), 6'738'415'616);
  EXPECT_EQ(estimate_model("13b").num_params(), 13'015'864'320);
  EXPECT_EQ(estimate_model("70b").num_params(), 68'976'648'192);
  for (const char* name : {"125m", "350m", "1.3b", "7b", "13b", "70b"}) {
    EstimateInput in = seven_b(1);
    in.model = estimate_model(name);
    Estimate e = estimate(in);
    EXPECT_EQ(e.params, in.model.num_params()) << name;
    EXPECT_EQ(e.rank_params, e.params) << name;
    EXPECT_DOUBLE_EQ(e.memory.weights, 2.0 * e.params) << name;
  }
  EXPECT_THROW(estimate_model("8b"), Error);
}

// Mixtral 8x7B's published sizes: 46.7B parameters, 12.9B used per token. Memory holds all of
// them; the FLOPs per token count the active ones.
TEST(Estimate, MixtralCountsActiveParametersForFlops) {
  const ModelConfig m = estimate_model("8x7b");
  EXPECT_EQ(m.num_params(), 46'702'792'704);
  EXPECT_EQ(m.active_params(), 12'879'925'248);
  EstimateInput in = seven_b(64);
  in.model = m;
  in.tp = 8;
  in.dp = 8;
  const Estimate e = estimate(in);
  EXPECT_EQ(e.params, m.num_params());
  EXPECT_EQ(e.active_params, m.active_params());
  EXPECT_DOUBLE_EQ(e.flops_6n, 6.0 * double(m.active_params()) * e.tokens_per_step);
  EXPECT_NE(estimate_table(e).find("active parameters"), std::string::npos);
}

TEST(Estimate, ZeroStagesDivideByDp) {
  EstimateInput in = seven_b(8);
  Estimate z0 = estimate(in);
  in.zero = 1;
  Estimate z1 = estimate(in);
  in.zero = 2;
  Estimate z2 = estimate(in);
  in.zero = 3;
  Estimate z3 = estimate(in);
  EXPECT_DOUBLE_EQ(z1.memory.optimizer, z0.memory.optimizer / 8);
  EXPECT_DOUBLE_EQ(z1.memory.grads, z0.memory.grads);
  EXPECT_DOUBLE_EQ(z1.memory.weights, z0.memory.weights);
  EXPECT_DOUBLE_EQ(z2.memory.optimizer, z0.memory.optimizer / 8);
  EXPECT_DOUBLE_EQ(z2.memory.grads, z0.memory.grads / 8);
  EXPECT_DOUBLE_EQ(z2.memory.weights, z0.memory.weights);
  EXPECT_DOUBLE_EQ(z3.memory.optimizer, z0.memory.optimizer / 8);
  EXPECT_DOUBLE_EQ(z3.memory.grads, z0.memory.grads / 8);
  EXPECT_DOUBLE_EQ(z3.memory.weights, z0.memory.weights / 8);
  EXPECT_DOUBLE_EQ(z3.memory.activations, z0.memory.activations);
  // ZeRO paper, Figure 1: 7.5B params, dp=64, K=12: 120 GB -> 31.4 (P_os) -> 16.6 (P_os+g) -> 1.9.
  EstimateInput paper = in;
  paper.params_override = 7'500'000'000;
  paper.gpus = paper.dp = 64;
  const double expect[4] = {120e9, 31.4e9, 16.6e9, 1.9e9};
  for (int z = 0; z <= 3; ++z) {
    paper.zero = z;
    EXPECT_NEAR(estimate(paper).memory.states(), expect[z], 0.06e9) << "zero=" << z;
  }
}

TEST(Estimate, TensorAndPipelineParallelDivideWeights) {
  EstimateInput in = seven_b(8);
  in.dp = 4, in.tp = 2;
  Estimate t2 = estimate(in);
  in.dp = 1, in.tp = 8;
  Estimate t8 = estimate(in);
  Estimate t1 = estimate(seven_b(8));
  EXPECT_DOUBLE_EQ(t2.memory.weights, t1.memory.weights / 2);
  EXPECT_DOUBLE_EQ(t8.memory.weights, t1.memory.weights / 8);
  EXPECT_LT(t8.memory.activations, t2.memory.activations);
  EXPECT_DOUBLE_EQ(t8.memory.logits, t1.memory.logits / 8);
  // pp: the first stage holds 1/pp of the layers plus the embedding.
  in.dp = 2, in.tp = 1, in.pp = 4;
  in.grad_accum = 8;
  Estimate p4 = estimate(in);
  const double C = 4096, V = 32000, layer = (6'738'415'616 - 2 * V * C - C) / 32;
  EXPECT_NEAR(double(p4.rank_params), 8 * layer + V * C, 1);
  EXPECT_NEAR(p4.bubble, 3.0 / (8 + 3), 1e-12);
}

TEST(Estimate, ActivationsFollowKorthikanti) {
  EstimateInput in = seven_b(1);
  in.recompute = R::none;
  const double s = 2048, b = 1, h = 4096, a = 32, L = 32, sbh = s * b * h;
  Estimate none = estimate(in);
  EXPECT_DOUBLE_EQ(none.memory.activations, L * sbh * (34 + 5 * a * s / h));
  EXPECT_DOUBLE_EQ(none.memory.logits, 4 * s * b * 32000);
  in.recompute = R::selective;
  Estimate sel = estimate(in);
  // 34·sbh per layer, plus one layer's attention core rematerialized in its backward.
  EXPECT_DOUBLE_EQ(sel.memory.activations, L * sbh * 34 + sbh * 5 * a * s / h);
  in.recompute = R::full;
  Estimate full = estimate(in);
  EXPECT_DOUBLE_EQ(full.memory.activations, L * sbh * 2 + sbh * (34 + 5 * a * s / h));
  EXPECT_GT(none.memory.activations, sel.memory.activations);
  EXPECT_GT(sel.memory.activations, full.memory.activations);
  EXPECT_GT(full.flops_per_step(), sel.flops_per_step());
  EXPECT_GT(sel.flops_per_step(), none.flops_per_step());
  // fp32 doubles every term but the 1-byte dropout masks: 66 + 9·a·s/h.
  in.recompute = R::none;
  in.precision = P::fp32;
  EXPECT_DOUBLE_EQ(estimate(in).memory.activations, L * sbh * (66 + 9 * a * s / h));
  // tp with sequence parallelism divides everything by t (Korthikanti Table 2).
  in.precision = P::bf16;
  in.recompute = R::selective;
  in.gpus = in.tp = 8;
  in.sequence_parallel = true;
  EXPECT_DOUBLE_EQ(estimate(in).memory.activations, (L * sbh * 34 + sbh * 5 * a * s / h) / 8);
  // FLOPs: 6·N·tokens + 12·L·s²·h per sequence.
  EXPECT_DOUBLE_EQ(none.flops_6n, 6.0 * 6'738'415'616 * s);
  EXPECT_DOUBLE_EQ(none.flops_attention, 12 * L * s * s * h);
}

TEST(Estimate, SuggestReturnsFittingLayoutsFastestFirst) {
  EstimateInput in = seven_b(8);
  std::vector<Estimate> s = suggest(in);
  ASSERT_FALSE(s.empty());
  for (size_t i = 0; i < s.size(); ++i) {
    const Estimate& e = s[i];
    EXPECT_TRUE(e.fits);
    EXPECT_LE(e.memory.total(), in.gpu_memory);
    EXPECT_EQ(e.in.dp * e.in.tp * e.in.pp, 8);
    EXPECT_EQ(32 % e.in.tp, 0);
    EXPECT_EQ(32 % e.in.pp, 0);
    EXPECT_EQ(e.in.global_batch, 8);  // held fixed across layouts
    if (i) {
      EXPECT_LE(s[i - 1].step_seconds, e.step_seconds);
    }
  }
  // Plain dp=8 with no ZeRO needs 16 bytes/param = 100 GiB: it must not be offered.
  for (const Estimate& e : s) EXPECT_FALSE(e.in.dp == 8 && e.in.zero == 0);
  // 70B on one 80 GiB GPU fits nowhere; the message says how many GPUs would do.
  EstimateInput big = seven_b(1);
  big.model = estimate_model("70b");
  EXPECT_TRUE(suggest(big).empty());
  std::string why = what_would_fit(big);
  EXPECT_NE(why.find("needs at least"), std::string::npos) << why;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Estimate, BadLayoutsAreErrors) {
  EstimateInput in = seven_b(8);
  in.dp = 2, in.tp = 3;
  in.gpus = 6;
  EXPECT_NE(error_of([&] { estimate(in); }).find("tp=3 must divide the 32 attention heads"),
            std::string::npos);
  in = seven_b(8);
  in.dp = 2;
  EXPECT_NE(error_of([&] { estimate(in); }).find("dp*tp*pp = 2*1*1 = 2 but --gpus is 8"),
            std::string::npos);
  in = seven_b(3);
  in.dp = 1, in.pp = 3;
  EXPECT_NE(error_of([&] { estimate(in); }).find("pp=3 must divide the 32 layers"),
            std::string::npos);
  in = seven_b(8);
  in.global_batch = 12;
  EXPECT_NE(error_of([&] { estimate(in); }).find("not a multiple of micro-batch*dp = 8"),
            std::string::npos);
  in = seven_b(1);
  in.zero = 4;
  EXPECT_THROW(estimate(in), Error);
  in = seven_b(1);
  in.model = estimate_model("70b");
  in.tp = 16, in.gpus = 16, in.dp = 1;  // 16 does not divide the 8 kv heads
  EXPECT_NE(error_of([&] { estimate(in); }).find("8 kv heads; choose tp in {1, 2, 4, 8}"),
            std::string::npos);
  EXPECT_DOUBLE_EQ(parse_bytes("80GiB"), 80 * kGiB);
  EXPECT_DOUBLE_EQ(parse_bytes("40 GB"), 40e9);
  EXPECT_THROW(parse_bytes("80 furlongs"), Error);
}

// ---- the measured-peak oracle: kiln's CPU trainer ----

ModelConfig cpu_config(Arch arch, int C, int L, int H, int K, int F, int V) {
  ModelConfig c;
  c.arch = arch;
  c.hidden = C, c.layers = L, c.heads = H, c.kv_heads = K, c.head_dim = C / H;
  c.intermediate = F, c.vocab_size = V, c.max_positions = 512;
  c.tie_embeddings = arch == Arch::gpt2;
  return c;
}

ModelConfig cpu_moe_config() {
  ModelConfig c = cpu_config(Arch::llama, 256, 4, 8, 4, 352, 8192);
  c.moe.experts = 8;
  c.moe.experts_per_tok = 2;
  return c;
}

struct CpuCase {
  const char* name;
  ModelConfig cfg;
  int B, T;
  TrainOptions opt = {};
};

std::vector<CpuCase> cpu_cases() {
  return {
      {"small gpt2", cpu_config(Arch::gpt2, 256, 4, 4, 4, 1024, 8192), 4, 128},
      {"medium llama gqa", cpu_config(Arch::llama, 384, 6, 6, 2, 1024, 8192), 4, 256},
      {"mixtral 8 x top-2", cpu_moe_config(), 4, 256},
      {"medium llama, full recompute",
       cpu_config(Arch::llama, 384, 6, 6, 2, 1024, 8192),
       4,
       256,
       {Precision::fp32, Recompute::full, -1}},
  };
}

// Bytes the real objects allocate: weights, grads, AdamW m and v, TrainState's activations.
TEST(EstimateKilnCpu, MatchesAllocatedBytes) {
  for (const CpuCase& c : cpu_cases()) {
    Model model(c.cfg);
    AdamW opt(model, {});
    Tensor grads = Tensor::zeros({model.num_params()});
    TrainState ts(model, c.B, c.T, c.opt);
    const double allocated = double(model.weights().nbytes() + grads.nbytes() + opt.m().nbytes() +
                                    opt.v().nbytes() + ts.bytes());
    const MemoryBytes est = estimate_kiln_cpu_memory(c.cfg, c.B, c.T, c.opt);
    EXPECT_EQ(model.num_params(), c.cfg.num_params()) << c.name;
    EXPECT_DOUBLE_EQ(est.states(), double(16 * model.num_params())) << c.name;
    // The estimate also counts what ts.bytes() leaves out (logits chunk, RoPE tables, positions).
    EXPECT_GE(est.total(), allocated) << c.name;
    EXPECT_LT(std::abs(est.total() - allocated) / allocated, 0.15) << c.name;
    std::printf("%-18s estimate %.1f MiB, allocated %.1f MiB\n", c.name, est.total() / 1048576,
                allocated / 1048576);
  }
}

long status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::stol(line.substr(n + 1));
  return -1;
}

// Peak RSS growth while building the training objects and running one step with an optimizer
// update, in `case_index`'s config. Runs in a freshly exec'd copy of this test binary (see
// MeasureInFreshProcess below), so nothing this process allocated and freed earlier, nor a
// forked parent's resident pages, distorts the baseline or the high-water mark.
double peak_growth_here(const CpuCase& c) {
  const long before = status_kib("VmRSS:");
  Model model(c.cfg);
  model.init_weights(1);
  AdamW opt(model, {});
  Tensor grads = Tensor::zeros({model.num_params()});
  TrainState ts(model, c.B, c.T, c.opt);
  std::vector<int> ids(size_t(c.B) * c.T), targets(ids.size());
  Rng rng(2);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int(rng.below(c.cfg.vocab_size));
    targets[i] = int(rng.below(c.cfg.vocab_size));
  }
  ts.step(model, ids.data(), targets.data(), grads.f32());
  double norm = 0;
  (void)clip_and_step(model, opt, grads.f32(), 1e-3f, 1.0f, &norm);
  return double(status_kib("VmHWM:") - before) * 1024.0;
}

// The child's entry point: does nothing unless KILN_MEASURE_CASE names a case.
TEST(EstimateKilnCpu, MeasureInFreshProcess) {
  const char* which = std::getenv("KILN_MEASURE_CASE");
  if (!which) GTEST_SKIP() << "only runs as the measuring child";
  std::printf("peak_growth=%.0f\n", peak_growth_here(cpu_cases().at(std::atoi(which))));
}

double measure_peak_growth(size_t case_index) {
  std::string cmd = "KILN_MEASURE_CASE=" + std::to_string(case_index) + " /proc/" +
                    std::to_string(getpid()) +
                    "/exe --gtest_filter=EstimateKilnCpu.MeasureInFreshProcess 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char line[512];
  double growth = -1;
  while (fgets(line, sizeof line, p))
    if (std::strncmp(line, "peak_growth=", 12) == 0) growth = std::atof(line + 12);
  pclose(p);
  return growth;
}

TEST(EstimateKilnCpu, WithinFifteenPercentOfMeasuredPeak) {
  if (status_kib("VmHWM:") < 0) GTEST_SKIP() << "no /proc/self/status VmHWM on this system";
  const auto cases = cpu_cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    const CpuCase& c = cases[i];
    const double est = double(estimate_kiln_cpu_bytes(c.cfg, c.B, c.T, c.opt));
    const double peak = measure_peak_growth(i);
    ASSERT_GT(peak, 0) << c.name << ": the measuring child failed";
    std::printf("%-18s estimate %.1f MiB, measured peak RSS growth %.1f MiB (%+.1f%%)\n", c.name,
                est / 1048576, peak / 1048576, 100 * (est - peak) / peak);
    EXPECT_LT(std::abs(est - peak) / peak, 0.15) << c.name;
  }
}

}  // namespace
}  // namespace kiln

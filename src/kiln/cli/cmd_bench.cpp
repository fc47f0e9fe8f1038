// kiln bench train --model-config CONFIG.json --batch B --seq T --steps S [--seed S]
// Times full training steps (forward, backward, AdamW) on synthetic tokens; one JSON line.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "kiln/cli/command.h"
#include "kiln/core/parallel.h"
#include "kiln/core/rng.h"
#include "kiln/model/config.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/matmul_bf16.h"
#include "kiln/train/optimizer.h"

namespace kiln::cli {
namespace {

struct BenchTrainArgs {
  std::string model_config;
  int batch = 8, seq = 256, steps = 10, warmup = 2;
  uint64_t seed = 0;
  float lr = 1e-4f;
  std::string precision = "fp32", recompute = "none";
};

// FLOPs of one training step: 6 per parameter per token for the matmuls (forward 2, backward 4),
// counting the LM head but not embedding lookups, plus causal attention: QK^T and PV are
// 2*2*T*T*H*D/2 per sequence per layer forward, three times that forward+backward.
double train_flops(const ModelConfig& c, int64_t params, int B, int T) {
  int64_t matmul_params = params - int64_t(c.vocab_size) * c.hidden;  // minus the lookup table
  if (c.tie_embeddings) matmul_params += int64_t(c.vocab_size) * c.hidden;  // it is the head too
  if (c.arch == Arch::gpt2) matmul_params -= int64_t(c.max_positions) * c.hidden;
  double tokens = double(B) * T;
  double attn = 3.0 * 2.0 * double(B) * T * T * c.heads * c.head_dim * c.layers;
  return 6.0 * double(matmul_params) * tokens + attn;
}

Command reg([](CLI::App& app) {
  // Shared with cmd_bench_infer.cpp, which adds `bench infer`.
  CLI::App* bench = group(app, "bench", "Benchmarks (one JSON line on stdout)");
  auto a = std::make_shared<BenchTrainArgs>();
  auto* cmd = bench->add_subcommand("train", "Time training steps on synthetic data");
  cmd->add_option("--model-config", a->model_config, "Hugging Face config.json")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--batch", a->batch, "Sequences per step")->capture_default_str();
  cmd->add_option("--seq", a->seq, "Sequence length")->capture_default_str();
  cmd->add_option("--steps", a->steps, "Timed steps")->capture_default_str();
  cmd->add_option("--warmup", a->warmup, "Untimed steps first")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seeds the weights and the data")->capture_default_str();
  cmd->add_option("--lr", a->lr, "AdamW learning rate")->capture_default_str();
  cmd->add_option("--precision", a->precision, "fp32 | bf16 | fp16")->capture_default_str();
  cmd->add_option("--recompute", a->recompute, "none | selective | full")->capture_default_str();
  cmd->callback([a] {
    ModelConfig cfg = load_model_config(a->model_config);
    Model model(cfg);
    model.init_weights(a->seed);
    AdamW opt(model, {0.9f, 0.95f, 1e-8f, 0.0f});
    TrainOptions opt_cfg{precision_from_name(a->precision), recompute_from_name(a->recompute)};
    TrainState ts(model, a->batch, a->seq, opt_cfg);
    Tensor grads = Tensor::zeros({model.num_params()});
    const int64_t N = int64_t(a->batch) * a->seq;
    std::vector<int32_t> ids(N), targets(N);
    Rng rng(a->seed + 1);
    std::vector<double> ms, losses;
    for (int s = 0; s < a->warmup + a->steps; ++s) {
      for (int64_t i = 0; i < N; ++i) {
        ids[i] = int32_t(rng.below(cfg.vocab_size));
        targets[i] = int32_t(rng.below(cfg.vocab_size));
      }
      auto t0 = std::chrono::steady_clock::now();
      std::memset(grads.raw(), 0, grads.nbytes());
      double loss = ts.step(model, ids.data(), targets.data(), grads.f32());
      opt.step(model, grads.f32(), a->lr);
      ts.refresh_weights(model);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= a->warmup) ms.push_back(dt * 1e3);
      losses.push_back(loss);
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    double med = sorted[sorted.size() / 2];
    double flops = train_flops(cfg, model.num_params(), a->batch, a->seq);
    std::printf(
        "{\"impl\":\"kiln\",\"threads\":%d,\"params\":%lld,\"batch\":%d,\"seq\":%d,"
        "\"step_ms_median\":%.3f,\"tokens_per_s\":%.1f,\"gflops\":%.2f,"
        "\"activation_bytes\":%zu,\"peak_bytes\":%zu,\"precision\":\"%s\","
        "\"recompute\":\"%s\",\"bf16_backend\":\"%s\",\"losses\":[",
        num_threads(), (long long)model.num_params(), a->batch, a->seq, med,
        double(N) / (med / 1e3), flops / (med / 1e3) / 1e9, ts.bytes(),
        size_t(4) * model.weights().nbytes() + ts.bytes(), a->precision.c_str(),
        a->recompute.c_str(), std::string(ops::cpu::bf16_backend()).c_str());
    for (size_t i = 0; i < losses.size(); ++i) std::printf("%s%.6f", i ? "," : "", losses[i]);
    std::printf("]}\n");
  });

  // kiln bench gemm: achieved GFLOP/s of the GEMM kiln calls, on a large square problem (the
  // machine's practical peak) and on the training benchmark's shapes.
  auto reps = std::make_shared<int>(20);
  auto* gemm = bench->add_subcommand("gemm", "GEMM GFLOP/s: peak and training shapes");
  gemm->add_option("--reps", *reps, "Repetitions per shape (median)")->capture_default_str();
  gemm->callback([reps] {
    struct Shape3 {
      const char* what;
      int M, N, K;
      bool ta, tb;
    };
    // Training benchmark: N = B*T = 2048 rows, C = 256, F = 704, V = 8192.
    const Shape3 shapes[] = {{"square 2048 (peak)", 2048, 2048, 2048, false, false},
                             {"qkv fwd (2048x512x256)", 2048, 512, 256, false, true},
                             {"gate|up fwd (2048x1408x256)", 2048, 1408, 256, false, true},
                             {"down fwd (2048x256x704)", 2048, 256, 704, false, true},
                             {"lm head fwd (256 rows x 8192 x 256)", 256, 8192, 256, false, true},
                             {"gate|up dW (1408x256x2048)", 1408, 256, 2048, true, false}};
    auto median_s = [&](auto&& fn) {
      std::vector<double> t;
      for (int r = 0; r < *reps + 2; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        fn();
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (r >= 2) t.push_back(dt);
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    for (const auto& s : shapes) {
      std::vector<float> a(size_t(s.M) * s.K, 0.5f), b(size_t(s.K) * s.N, 0.25f),
          c(size_t(s.M) * s.N);
      std::vector<uint16_t> ab(a.size()), bb(b.size());
      ops::cpu::f32_to_bf16(ab.data(), a.data(), int64_t(a.size()));
      ops::cpu::f32_to_bf16(bb.data(), b.data(), int64_t(b.size()));
      const double flop = 2.0 * s.M * s.N * s.K;
      double f32 = median_s([&] {
        ops::cpu::gemm(c.data(), a.data(), b.data(), s.M, s.N, s.K, s.ta, s.tb, 1.0f, 0.0f);
      });
      double bf16 = median_s([&] {
        ops::cpu::gemm_bf16(c.data(), ab.data(), bb.data(), s.M, s.N, s.K, s.ta, s.tb, 1.0f, 0.0f);
      });
      std::printf(
          "{\"shape\":\"%s\",\"M\":%d,\"N\":%d,\"K\":%d,\"threads\":%d,"
          "\"sgemm_gflops\":%.1f,\"bf16_gflops\":%.1f,\"bf16_backend\":\"%s\"}\n",
          s.what, s.M, s.N, s.K, num_threads(), flop / f32 / 1e9, flop / bf16 / 1e9,
          std::string(ops::cpu::bf16_backend()).c_str());
    }
  });
});

}  // namespace
}  // namespace kiln::cli

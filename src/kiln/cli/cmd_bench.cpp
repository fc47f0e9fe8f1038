// kiln bench train --model-config CONFIG.json --batch B --seq T --steps S [--seed S]
//                  [--tp T --pp P --zero Z --sp --schedule 1f1b|gpipe --accum M] [--lora R
//                  [--qlora]]
//                  [--device cuda [--tf32] [--peak-tflops F]]
// Times the trainer's steps (kiln::train on mock data: forward, backward, clipping, AdamW) in
// the given layout, on one process or the ranks mpirun started; one JSON line. FLOPs are
// train/estimate's model, so `kiln bench train` and `kiln estimate` count the same work.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kiln/cli/command.h"
#include "kiln/cli/mpi_world.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/dist/launch.h"
#include "kiln/model/config.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/matmul_bf16.h"
#include "kiln/train/cuda_train_state.h"
#ifdef KILN_HAVE_CUDA
#include "kiln/cuda/bench.h"
#endif
#include "kiln/train/estimate.h"
#include "kiln/train/trainer.h"

namespace kiln::cli {
namespace {

struct BenchTrainArgs {
  std::string model_config;
  int batch = 8, seq = 256, steps = 10, warmup = 2;
  uint64_t seed = 0;
  float lr = 1e-4f;
  std::string precision = "fp32", recompute = "none";
  int lora = 0;        // LoRA rank; 0: full training
  bool qlora = false;  // with lora: the frozen base's projections in NF4
  // The parallel layout (TrainConfig::Parallel); dp = ranks / (tp * pp).
  int tp = 1, pp = 1, zero = 0, accum = 1;
  bool sp = false;
  std::string schedule = "1f1b";
  double bucket_mb = TrainConfig{}.parallel.bucket_mb;
  std::string device = "cpu";
  bool tf32 = false;
  double peak_tflops = 0;  // 0: from the GPU's name (dense bf16 tensor-core peak)
};

// Dense (non-sparse) bf16 tensor-core peak of a GPU by name, in TFLOP/s; 0 when unknown.
double dense_bf16_peak_tflops(const std::string& name) {
  struct Known {
    const char* tag;
    double tflops;
  };
  // NVIDIA data sheets: H100 SXM 989, H100 PCIe 756, H200 989, A100 312, L40S 362.
  for (Known k : {Known{"H100 PCIe", 756}, Known{"H100", 989}, Known{"H200", 989},
                  Known{"GH200", 989}, Known{"A100", 312}, Known{"L40S", 362}})
    if (name.find(k.tag) != std::string::npos) return k.tflops;
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// kiln::train itself on mock data (data.mock), warmup + steps optimizer steps at a constant
// learning rate, with no evaluation and no checkpoint, on the ranks mpirun started (comm) or one
// process (null). Rank 0 prints the JSON line; the same seed gives every layout the losses of one
// process, and of `kiln train` with the same model, batch and seed on data.mock.
void bench_train_layout(const BenchTrainArgs& a, dist::Comm* comm) {
  KILN_CHECK(a.steps > 0 && a.warmup >= 0, "bench", "--steps must be positive and --warmup ",
             "non-negative, got ", a.steps, " and ", a.warmup);
  KILN_CHECK(!a.sp || a.tp > 1, "bench", "--sp (sequence parallelism) needs --tp > 1");
  TrainConfig cfg;
  cfg.model = load_model_config(a.model_config);
  cfg.seed = a.seed;
  cfg.data.mock = true;
  cfg.train.steps = a.warmup + a.steps;
  cfg.train.batch_size = a.batch;
  cfg.train.seq_len = a.seq;
  cfg.train.grad_accum = a.accum;
  cfg.train.eval_every = 0;
  cfg.train.checkpoint_every = 0;
  cfg.train.final_checkpoint = false;
  cfg.train.samples = 0;
  cfg.train.precision = precision_from_name(a.precision);
  cfg.train.recompute = recompute_from_name(a.recompute);
  KILN_CHECK(!a.qlora || a.lora > 0, "bench", "--qlora adapts the model: give --lora R too");
  if (a.lora > 0) {  // the random model frozen, an adapter on every linear layer trained
    cfg.method = a.qlora ? "qlora" : "lora";
    cfg.lora.r = a.lora;
    cfg.lora.alpha = 2.0f * float(a.lora);
    cfg.lora.target_modules = {"all-linear"};
  }
  cfg.optim.lr = a.lr;
  cfg.optim.schedule = LrSchedule::constant;
  cfg.optim.warmup_steps = 0;
  cfg.parallel.tp = a.tp;
  cfg.parallel.pp = a.pp;
  cfg.parallel.zero = a.zero;
  cfg.parallel.sequence_parallel = a.sp;
  cfg.parallel.schedule = a.schedule;
  cfg.parallel.bucket_mb = a.bucket_mb;
  cfg.device = device_from_name(a.device);
  cfg.train.tf32 = a.tf32;
  // The trainer compares this text across ranks: every rank must be started with the same flags.
  cfg.yaml = nlohmann::json{{"bench", "train"},
                            {"model_config", a.model_config},
                            {"batch", a.batch},
                            {"seq", a.seq},
                            {"steps", a.steps},
                            {"warmup", a.warmup},
                            {"seed", a.seed},
                            {"lr", a.lr},
                            {"precision", a.precision},
                            {"recompute", a.recompute},
                            {"lora", a.lora},
                            {"qlora", a.qlora},
                            {"tp", a.tp},
                            {"pp", a.pp},
                            {"zero", a.zero},
                            {"sp", a.sp},
                            {"schedule", a.schedule},
                            {"accum", a.accum},
                            {"bucket_mb", a.bucket_mb},
                            {"device", a.device},
                            {"tf32", a.tf32}}
                 .dump() +
             "\n";
  // The trainer still writes config.yaml and metrics.jsonl (rank 0 only): into a scratch
  // directory, removed afterwards.
  const std::filesystem::path run_dir =
      std::filesystem::temp_directory_path() / ("kiln-bench-train-" + std::to_string(getpid()));
  cfg.run_dir = run_dir.string();
  TrainResult r = train(cfg, false, comm);
  std::filesystem::remove_all(run_dir);
  const int ranks = comm ? comm->size() : 1;
  if (comm && comm->rank() != 0) return;

  const double med = median({r.step_ms.begin() + a.warmup, r.step_ms.end()});
  nlohmann::ordered_json j;
  j["impl"] = "kiln";
  j["threads"] = num_threads();
  j["ranks"] = ranks;
  j["dp"] = ranks / (a.tp * a.pp);
  j["tp"] = a.tp;
  j["pp"] = a.pp;
  j["zero"] = a.zero;
  j["sp"] = a.sp;
  j["schedule"] = a.schedule;
  j["accum"] = a.accum;
  j["bucket_mb"] = a.bucket_mb;
  j["params"] = cfg.model.num_params();
  j["active_params"] = cfg.model.active_params();  // MoE: the experts a token reaches
  j["batch"] = a.batch;
  j["seq"] = a.seq;
  j["precision"] = a.precision;
  j["step_ms_median"] = med;
  j["tokens_per_s"] = double(a.batch) * a.seq * a.accum / (med / 1e3);
  j["recompute"] = a.recompute;
  j["method"] = a.lora > 0 ? cfg.method + " r " + std::to_string(a.lora) : "full";
  j["bf16_backend"] = std::string(ops::cpu::bf16_backend());
  const double flops = step_flops(cfg.model, double(cfg.model.active_params()),
                                  double(a.batch) * a.accum, a.seq, cfg.train.recompute)
                           .total();
  // (With LoRA the frozen weights' gradient GEMMs are skipped: the count does not apply.)
  if (a.lora == 0) j["gflops"] = flops / (med / 1e3) / 1e9;
  j["device"] = a.device;
  if (cfg.device == Device::cuda) {
    const std::string gpu = cuda_device_name();
    const double achieved = flops / (med / 1e3) / 1e12;
    const double peak = a.peak_tflops > 0 ? a.peak_tflops : dense_bf16_peak_tflops(gpu);
    j["gpu"] = gpu;
    j["tf32"] = a.tf32;
    j["tflops"] = achieved;
    if (peak > 0) j["mfu"] = achieved / peak;  // against the dense bf16 peak
    j["peak_tflops"] = peak;
  }
  j["activation_bytes"] = r.activation_bytes;
  j["peak_bytes"] = r.state_bytes + r.activation_bytes;  // weights, grads, moments, activations
  j["state_bytes"] = r.state_bytes;
  j["comm_bytes"] = r.comm_bytes;
  j["losses"] = r.losses;
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
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
  cmd->add_option("--lora", a->lora,
                  "Rank R: the model frozen, LoRA (alpha 2R) on every linear layer but the head")
      ->capture_default_str();
  cmd->add_flag("--qlora", a->qlora, "With --lora: QLoRA, the frozen projections held in NF4");
  // The layout (dp: the ranks mpirun started over tp * pp).
  cmd->add_option("--tp", a->tp, "Tensor-parallel ranks")->capture_default_str();
  cmd->add_option("--pp", a->pp, "Pipeline stages")->capture_default_str();
  cmd->add_option("--zero", a->zero, "ZeRO stage 0-3")->capture_default_str();
  cmd->add_flag("--sp", a->sp, "Sequence parallelism (with --tp)");
  cmd->add_option("--schedule", a->schedule, "Pipeline schedule: 1f1b | gpipe")
      ->capture_default_str();
  cmd->add_option("--accum", a->accum, "Micro-batches per step (pipeline micro-batches)")
      ->capture_default_str();
  cmd->add_option("--bucket-mb", a->bucket_mb, "Gradient all-reduce bucket (MB)")
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda (the trainer on one GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--tf32", a->tf32, "With --device cuda --precision fp32: TF32 tensor cores");
  cmd->add_option("--peak-tflops", a->peak_tflops,
                  "The GPU's dense bf16 peak for MFU (default: by its name)");
  cmd->callback([a] {
    if (dist::launched_world_size() > 1) {
      run_on_mpi_world(TrainConfig{}.parallel.timeout_s,
                       [&](dist::Comm& comm) { bench_train_layout(*a, &comm); });
    } else {
      bench_train_layout(*a, nullptr);
    }
  });
  // kiln bench gemm: achieved GFLOP/s of the GEMM kiln calls, on a large square problem (the
  // machine's practical peak) and on the training benchmark's shapes.
  auto reps = std::make_shared<int>(20);
  // kiln bench attention: the GPU flash attention alone (PyTorch's peer: bench/attention_torch.py).
  struct AttnArgs {
    int batch = 4, seq = 4096, heads = 16, kv_heads = 16, head_dim = 128, reps = 20;
    std::string precision = "bf16";
  };
  auto at = std::make_shared<AttnArgs>();
  auto* attn = bench->add_subcommand("attention", "Time causal flash attention on the GPU");
  attn->add_option("--batch", at->batch)->capture_default_str();
  attn->add_option("--seq", at->seq)->capture_default_str();
  attn->add_option("--heads", at->heads)->capture_default_str();
  attn->add_option("--kv-heads", at->kv_heads)->capture_default_str();
  attn->add_option("--head-dim", at->head_dim)->capture_default_str();
  attn->add_option("--reps", at->reps, "Timed repetitions (median)")->capture_default_str();
  attn->add_option("--precision", at->precision, "bf16 | fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  attn->callback([at] {
#ifdef KILN_HAVE_CUDA
    cuda::AttentionTiming t = cuda::time_attention(at->batch, at->seq, at->heads, at->kv_heads,
                                                   at->head_dim, at->precision == "bf16", at->reps);
    nlohmann::ordered_json j{{"impl", "kiln"},
                             {"gpu", cuda::device_description()},
                             {"precision", at->precision},
                             {"batch", at->batch},
                             {"seq", at->seq},
                             {"heads", at->heads},
                             {"kv_heads", at->kv_heads},
                             {"head_dim", at->head_dim},
                             {"fwd_ms", t.fwd_ms},
                             {"bwd_ms", t.bwd_ms},
                             {"fwd_tflops", t.fwd_tflops},
                             {"fwd_bwd_tflops", t.fwd_bwd_tflops}};
    std::printf("%s\n", j.dump().c_str());
#else
    fail("bench",
         "bench attention runs on the GPU, and this kiln was built without the CUDA "
         "backend; install the CUDA toolkit and rebuild (bash scripts/build.sh "
         "-DKILN_CUDA=ON)");
#endif
  });

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

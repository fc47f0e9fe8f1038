// kiln estimate --model 7b|CONFIG.json --gpus N --gpu-memory 80GiB --peak-tflops 989
//               [--dp --tp --pp --zero Z] [--micro-batch B --seq T] [--suggest] [--json]
// Memory per rank and time for a training run (train/estimate.h); docs/estimate.md explains it.
#include <cstdio>
#include <iostream>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/train/estimate.h"

namespace kiln::cli {
namespace {

struct EstimateArgs {
  std::string model = "7b", gpu_memory = "80GiB", precision = "bf16", recompute = "selective";
  std::string accounting = "standard";
  double params = 0;
  bool suggest = false, json = false;
};

Command reg([](CLI::App& app) {
  auto a = std::make_shared<EstimateArgs>();
  auto in = std::make_shared<EstimateInput>();
  auto* cmd = app.add_subcommand("estimate", "Memory per rank and training time for a layout");
  cmd->add_option("--model", a->model, "125m, 350m, 1.3b, 7b, 13b, 70b or a config.json")
      ->capture_default_str();
  cmd->add_option("--params", a->params, "Override the parameter count N (e.g. 7e9)");
  cmd->add_option("--gpus", in->gpus, "GPUs in the job")->capture_default_str();
  cmd->add_option("--gpu-memory", a->gpu_memory, "Memory per GPU (80GiB, 40GB, ...)")
      ->capture_default_str();
  cmd->add_option("--peak-tflops", in->peak_tflops, "Dense 16-bit peak per GPU")
      ->capture_default_str();
  cmd->add_option("--dp", in->dp, "Data-parallel ranks (default gpus/(tp*pp))");
  cmd->add_option("--tp", in->tp, "Tensor-parallel ranks")->capture_default_str();
  cmd->add_option("--pp", in->pp, "Pipeline stages")->capture_default_str();
  cmd->add_option("--zero", in->zero, "ZeRO stage 0..3 over dp")->capture_default_str();
  cmd->add_flag("--sp", in->sequence_parallel, "Sequence parallelism with tp");
  cmd->add_option("--micro-batch", in->micro_batch, "Sequences per micro-batch per rank")
      ->capture_default_str();
  cmd->add_option("--seq", in->seq, "Sequence length")->capture_default_str();
  cmd->add_option("--grad-accum", in->grad_accum, "Micro-batches per step")->capture_default_str();
  cmd->add_option("--global-batch", in->global_batch, "Sequences per step (overrides grad-accum)");
  cmd->add_option("--precision", a->precision, "fp32 | bf16 | fp16")->capture_default_str();
  cmd->add_option("--recompute", a->recompute, "none | selective | full")->capture_default_str();
  cmd->add_option("--accounting", a->accounting, "standard (2+2+12) | seed (2+2+4) bytes/param")
      ->capture_default_str();
  cmd->add_option("--tokens", in->tokens, "Training tokens D (default 20*N)");
  cmd->add_option("--mfu", in->mfu, "Assumed model FLOPs utilization")->capture_default_str();
  cmd->add_flag("--kiln-cpu", in->kiln_cpu, "kiln's own fp32 CPU trainer (one process)");
  cmd->add_flag("--suggest", a->suggest, "List the layouts that fit, fastest first");
  cmd->add_flag("--json", a->json, "One JSON object instead of the table");
  cmd->callback([a, in] {
    in->model = estimate_model(a->model);
    in->params_override = int64_t(a->params);
    in->gpu_memory = parse_bytes(a->gpu_memory);
    in->precision = precision_from_name(a->precision);
    in->recompute = recompute_from_name(a->recompute);
    in->accounting = parse_accounting(a->accounting);
    if (a->suggest) {
      std::vector<Estimate> fits = suggest(*in);
      KILN_CHECK(!fits.empty(), "estimate", "no layout of ", in->gpus,
                 " GPUs fits: ", what_would_fit(*in));
      if (a->json) {
        nlohmann::json j = nlohmann::json::array();
        for (const Estimate& e : fits) j.push_back(estimate_json(e));
        std::cout << j.dump(2) << "\n";
      } else {
        std::cout << suggest_table(fits);
      }
      return;
    }
    Estimate e = estimate(*in);
    if (a->json) {
      std::cout << estimate_json(e).dump(2) << "\n";
      return;
    }
    std::cout << estimate_table(e);
    if (!e.fits) std::cout << "\ndoes not fit: " << what_would_fit(*in) << "\n";
  });
});

}  // namespace
}  // namespace kiln::cli

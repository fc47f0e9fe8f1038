// kiln bench infer (--model DIR|FILE.gguf | --model-config CONFIG.json) [--batch B] [--json]
// llama-bench's two tests on the batched engine: pp512 (one 512-token prompt in one step) and
// tg128 (B sequences generating 128 tokens each, greedy, from a 1-token prompt), each timed over
// --reps runs after a warmup; tokens/s as mean ± sd. Random weights with --model-config; a GGUF
// runs its q8_0/q4_0 matrices as they are (quant::cpu::matmul). --device cuda runs both tests on
// the GPU decoder (infer/cuda_decoder.h; bf16 weights and KV cache unless --precision fp32).
#include <chrono>
#include <cmath>
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/core/cpu_isa.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/core/rng.h"
#include "kiln/infer/cuda_decoder.h"
#include "kiln/infer/engine.h"
#include "kiln/model/model_io.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/train/cuda_train_state.h"

namespace kiln::cli {
namespace {

struct BenchInferArgs {
  std::string model, model_config;
  int batch = 1, pp = 512, tg = 128, reps = 5;
  uint64_t seed = 0;
  bool json = false;
  std::string device = "cpu", precision = "bf16";
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct MeanSd {
  double mean = 0, sd = 0;
};
MeanSd mean_sd(const std::vector<double>& v) {
  MeanSd r;
  for (double x : v) r.mean += x / double(v.size());
  for (double x : v) r.sd += (x - r.mean) * (x - r.mean);
  r.sd = v.size() > 1 ? std::sqrt(r.sd / double(v.size() - 1)) : 0;
  return r;
}

// pp and tg on the batched CPU engine.
void bench_on_cpu(const BenchInferArgs& a, const Model& model,
                  std::map<std::string, quant::QTensor>& qweights, std::vector<double>& pp,
                  std::vector<double>& tg) {
  const ModelConfig& cfg = model.config();
  EngineOptions opts;
  opts.max_running = std::max(1, a.batch);
  opts.token_budget = std::max(a.pp, a.batch);
  opts.max_context = std::max(a.pp + 1, a.tg + 1);
  opts.prefix_caching = false;  // every run computes its prompt
  Engine eng(model.config(), quantized_weights(model, qweights), opts);
  SamplingParams greedy;
  greedy.temperature = 0;
  Rng rng(a.seed + 1);
  auto prompt = [&](int n) {
    std::vector<int32_t> p(n);
    for (auto& t : p) t = int32_t(rng.below(cfg.vocab_size));
    return p;
  };
  StopConditions one;
  one.max_tokens = 1;
  one.ignore_eos = true;
  for (int r = 0; r <= a.reps; ++r) {  // run 0 warms up
    eng.add_request(prompt(a.pp), greedy, one);
    auto t0 = std::chrono::steady_clock::now();
    eng.step();  // the whole prompt fits the token budget: one step
    const double dt = seconds_since(t0);
    KILN_CHECK(eng.idle(), "bench", "pp did not finish in one step");
    eng.run_all();
    if (r > 0) pp.push_back(a.pp / dt);
  }
  StopConditions gen;
  gen.max_tokens = a.tg;
  gen.ignore_eos = true;
  for (int r = 0; r <= a.reps; ++r) {
    for (int b = 0; b < a.batch; ++b) eng.add_request(prompt(1), greedy, gen);
    eng.step();  // the 1-token prompts and the first token
    auto t0 = std::chrono::steady_clock::now();
    int64_t tokens = 0;
    while (!eng.idle())
      for (const TokenEvent& e : eng.step()) tokens += int64_t(e.tokens.size());
    const double dt = seconds_since(t0);
    eng.run_all();
    if (r > 0) tg.push_back(double(tokens) / dt);
  }
}

// pp and tg on the GPU decoder: the prompt's rows in one forward call; tg as `batch` sequences
// decoding one token each per call, greedy (the argmax on the GPU).
void bench_on_gpu(const BenchInferArgs& a, const Model& model, std::vector<double>& pp,
                  std::vector<double>& tg) {
  const ModelConfig& cfg = model.config();
  CudaDecoder dec(model, a.batch, std::max(a.pp + 1, a.tg + 1), std::max(a.pp, a.batch),
                  a.precision == "bf16");
  Rng rng(a.seed + 1);
  std::vector<int> seq, tok, pos, next;
  for (int r = 0; r <= a.reps; ++r) {  // run 0 warms up
    seq.assign(a.pp, 0), tok.resize(a.pp), pos.resize(a.pp), next.resize(a.pp);
    for (int i = 0; i < a.pp; ++i) tok[i] = int(rng.below(cfg.vocab_size)), pos[i] = i;
    auto t0 = std::chrono::steady_clock::now();
    dec.forward(seq.data(), tok.data(), pos.data(), a.pp, next.data());
    if (r > 0) pp.push_back(a.pp / seconds_since(t0));
  }
  for (int r = 0; r <= a.reps; ++r) {
    const int B = a.batch;
    seq.resize(B), tok.resize(B), pos.assign(B, 0), next.resize(B);
    for (int b = 0; b < B; ++b) seq[b] = b, tok[b] = int(rng.below(cfg.vocab_size));
    dec.forward(seq.data(), tok.data(), pos.data(), B, next.data());  // prompt + first token
    auto t0 = std::chrono::steady_clock::now();
    for (int step = 1; step < a.tg; ++step) {
      for (int b = 0; b < B; ++b) tok[b] = next[b], pos[b] = step;
      dec.forward(seq.data(), tok.data(), pos.data(), B, next.data());
    }
    if (r > 0) tg.push_back(double(B) * (a.tg - 1) / seconds_since(t0));
  }
}

Command reg([](CLI::App& app) {
  CLI::App* bench = group(app, "bench", "Benchmarks (one JSON line on stdout)");
  auto a = std::make_shared<BenchInferArgs>();
  auto* cmd = bench->add_subcommand("infer", "Inference speed: pp512 and tg128 tokens/s");
  auto* m =
      cmd->add_option("--model", a->model, "Model, checkpoint or run directory, or a GGUF file");
  auto* c =
      cmd->add_option("--model-config", a->model_config, "Hugging Face config.json: random weights")
          ->check(CLI::ExistingFile);
  m->excludes(c);
  cmd->add_option("--batch", a->batch, "Sequences decoding together in tg")->capture_default_str();
  cmd->add_option("--pp", a->pp, "Prompt tokens in pp")->capture_default_str();
  cmd->add_option("--tg", a->tg, "Generated tokens per sequence in tg")->capture_default_str();
  cmd->add_option("--reps", a->reps, "Timed runs per test")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seeds random weights and prompts")->capture_default_str();
  cmd->add_flag("--json", a->json, "One JSON line instead of the table");
  cmd->add_option("--device", a->device, "cpu | cuda (the GPU decoder)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_option("--precision", a->precision, "With --device cuda: bf16 | fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}))
      ->capture_default_str();
  cmd->callback([a] {
    KILN_CHECK(!a->model.empty() || !a->model_config.empty(), "bench",
               "give --model DIR or --model-config CONFIG.json");
    KILN_CHECK(a->batch >= 1 && a->pp >= 1 && a->tg >= 2 && a->reps >= 1, "bench",
               "--batch, --pp and --reps must be >= 1 and --tg >= 2");
    std::unique_ptr<Model> model;
    std::string name, format = "f32";
    std::map<std::string, quant::QTensor> qweights;
    if (!a->model.empty() && quant::is_gguf_path(a->model)) {
      quant::GgufModel g = quant::load_gguf_model(a->model, /*keep_quantized=*/true);
      model = std::move(g.model);
      qweights = std::move(g.qweights);
      format = g.file_type;
      name = a->model;
    } else if (!a->model.empty()) {
      const std::string dir = resolve_model_dir(a->model);
      model = load_model(dir);
      name = dir;
    } else {
      model = std::make_unique<Model>(load_model_config(a->model_config));
      model->init_weights(a->seed);
      name = a->model_config;
    }
    if (auto slash = name.find_last_of('/'); slash != std::string::npos && slash + 1 < name.size())
      name = name.substr(slash + 1);
    const ModelConfig& cfg = model->config();
    KILN_CHECK(a->pp < cfg.max_positions && a->tg + 1 <= cfg.max_positions, "bench",
               "--pp / --tg exceed the model's context of ", cfg.max_positions);
    std::vector<double> pp, tg;
    const bool gpu = a->device == "cuda";
    if (gpu) {
      KILN_CHECK(qweights.empty(), "bench", "--device cuda runs bf16/fp32 weights; give a ",
                 "checkpoint directory or --model-config, not a quantized GGUF");
      bench_on_gpu(*a, *model, pp, tg);
      format = a->precision;
    } else {
      bench_on_cpu(*a, *model, qweights, pp, tg);
    }
    const MeanSd p = mean_sd(pp), g = mean_sd(tg);
    const double params_m = double(model->num_params()) / 1e6;
    const std::string where =
        gpu ? cuda_device_name()
            : std::to_string(num_threads()) + " threads, " + std::string(isa_name(active_isa()));
    if (a->json) {
      std::printf(
          "{\"impl\":\"kiln\",\"model\":\"%s\",\"format\":\"%s\",\"params\":%lld,\"threads\":%d,"
          "\"device\":\"%s\",\"isa\":\"%s\",\"batch\":%d,"
          "\"pp\":%d,\"tg\":%d,\"reps\":%d,\"pp_tokens_per_s\":%.2f,\"pp_sd\":%.2f,"
          "\"tg_tokens_per_s\":%.2f,\"tg_sd\":%.2f}\n",
          name.c_str(), format.c_str(), (long long)model->num_params(), num_threads(),
          gpu ? where.c_str() : "cpu", std::string(isa_name(active_isa())).c_str(), a->batch, a->pp,
          a->tg, a->reps, p.mean, p.sd, g.mean, g.sd);
      return;
    }
    std::printf("| model | params | device | batch | test | t/s |\n");
    std::printf("| --- | ---: | --- | ---: | --- | ---: |\n");
    std::printf("| %s | %.1fM | %s | 1 | pp%d | %.2f ± %.2f |\n", name.c_str(), params_m,
                where.c_str(), a->pp, p.mean, p.sd);
    std::printf("| %s | %.1fM | %s | %d | tg%d | %.2f ± %.2f |\n", name.c_str(), params_m,
                where.c_str(), a->batch, a->tg, g.mean, g.sd);
  });
});

}  // namespace
}  // namespace kiln::cli

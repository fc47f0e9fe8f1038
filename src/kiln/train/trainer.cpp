#include "kiln/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/batch_source.h"
#include "kiln/dist/comm.h"
#include "kiln/dist/groups.h"
#include "kiln/infer/generate.h"
#include "kiln/io/file.h"
#include "kiln/model/model_io.h"
#include "kiln/ops/elementwise.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/optimizer.h"
#include "kiln/train/schedule.h"
#include "kiln/train/tensor_parallel_state.h"

namespace kiln {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The process's peak resident memory (VmHWM), in bytes; 0 where /proc is unavailable.
int64_t peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

// Keeps only the metrics records up to `step` (a resumed run rewrites what follows).
void truncate_metrics(const std::string& path, int64_t step) {
  if (!file_exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step")) continue;  // a torn last line from a kill
    if (j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// Mean validation loss over up to max_batches global batches of B sequences; with data
// parallelism each rank computes its B/dp rows and the token-weighted sums are all-reduced, so
// every layout reports the single-process figure (up to summation order).
double evaluate(const Model& model, TrainState& ts, const BatchSource& val, int B, int max_batches,
                dist::Comm& comm) {
  const int T = ts.T(), Bl = ts.B();
  int64_t n = std::min<int64_t>(max_batches, val.eval_batches_available(B));
  if (n <= 0) return NAN;
  std::vector<int32_t> ids(size_t(B) * T), tg(size_t(B) * T);
  const size_t off = size_t(comm.rank()) * Bl * T;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    val.eval_batch(int(i), B, ids.data(), tg.data());
    const int64_t total = std::count_if(tg.begin(), tg.end(), [](int32_t t) { return t >= 0; });
    const double mean = ts.step(model, ids.data() + off, tg.data() + off, nullptr);
    double part = mean * double(ts.counted_tokens()) / double(std::max<int64_t>(total, 1));
    if (comm.size() > 1) {
      float f = float(part);
      comm.all_reduce(&f, 1);
      part = f;
    }
    sum += part;
  }
  return sum / double(n);
}

}  // namespace

TrainResult train(TrainConfig cfg, bool resume, dist::Comm* comm_arg) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  // Data parallelism: every rank of the dp group holds the same weights, draws the same global
  // batch and computes its slice of it; gradients are summed across the group before the
  // (identical) update. Tensor parallelism: the tp group's ranks hold shards of one model and
  // compute the same rows together. World rank 0 alone writes the run directory.
  dist::SingleComm single;
  dist::Comm& comm = comm_arg ? *comm_arg : single;
  KILN_CHECK(cfg.parallel.pp == 1 && cfg.parallel.zero == 0, "train",
             "parallel.pp and parallel.zero are not implemented yet; leave them at 1 and 0");
  dist::ProcessGroups groups = dist::make_groups(comm, cfg.parallel.tp, 1);
  dist::Comm& dpc = *groups.dp;
  const int dp = dpc.size(), rank = dpc.rank(), tp = cfg.parallel.tp;
  const bool writer = comm.rank() == 0;
  KILN_CHECK(cfg.train.batch_size % dp == 0, "train", "train.batch_size = ", cfg.train.batch_size,
             " is not divisible by the ", dp, " data-parallel ranks; use a multiple of ", dp);
  if (!writer) set_log_level(LogLevel::warn);
  if (writer) {
    make_dirs(cfg.run_dir);
    write_file_atomic(cfg.run_dir + "/config.yaml", cfg.yaml);
  }

  Tokenizer tok = cfg.data.tokenizer == "byte" ? Tokenizer::byte_level({"<|endoftext|>"})
                                               : Tokenizer::load(cfg.data.tokenizer);
  std::unique_ptr<Model> model;
  if (!cfg.init_from.empty()) {
    model = load_model(resolve_model_dir(cfg.init_from));
    cfg.model = model->config();
  } else {
    if (cfg.vocab_from_tokenizer) cfg.model.vocab_size = tok.vocab_size();
    if (auto eos = tok.eos_id()) cfg.model.eos_token_id = cfg.model.bos_token_id = *eos;
    model = std::make_unique<Model>(cfg.model);
    model->init_weights(cfg.seed);
  }
  KILN_CHECK(model->config().vocab_size >= tok.vocab_size(), "train", "the model's vocab_size (",
             model->config().vocab_size, ") is smaller than the tokenizer's (", tok.vocab_size(),
             "); raise model.vocab_size or omit it to take the tokenizer's");
  // With tensor parallelism this rank trains its shard `m`; `model` stays the full model (the
  // starting point, and on rank 0 what checkpoints gather into).
  std::unique_ptr<TensorParallelMap> tpm;
  std::unique_ptr<Model> shard;
  if (tp > 1) {
    tpm = std::make_unique<TensorParallelMap>(model->config(), tp, groups.plan.tp_rank);
    shard = std::make_unique<Model>(tpm->config());
  }
  Model& m = shard ? *shard : *model;

  if (cfg.data.blend.empty()) {
    log_info("tokenizing ", cfg.data.train.size(), " file(s) with a ", tok.vocab_size(),
             "-token vocabulary");
  }
  const int B = cfg.train.batch_size, T = cfg.train.seq_len, accum = cfg.train.grad_accum;
  DataSpec spec;
  spec.train_files = cfg.data.train;
  spec.val_file = cfg.data.val;
  spec.val_fraction = cfg.data.val_fraction;
  spec.blend = cfg.data.blend;
  spec.split = cfg.data.split;
  std::unique_ptr<BatchSource> data = open_batch_source(
      spec, tok, T, cfg.seed, int64_t(cfg.train.steps) * cfg.train.batch_size * accum);
  const bool has_val = data->eval_batches_available(B) > 0;
  log_info("data: ", data->describe(), "; model: ", model->num_params(), " parameters");

  const AdamWConfig adamw{cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps, cfg.optim.weight_decay};
  AdamW opt(m, adamw);
  std::unique_ptr<AdamW> full_opt;  // tp: the full model's moments (resume, checkpoints)
  if (shard) full_opt = std::make_unique<AdamW>(*model, adamw);
  TrainerState state;
  const std::string metrics_path = cfg.run_dir + "/metrics.jsonl";
  if (resume) {
    std::string ckpt = latest_checkpoint(cfg.run_dir);
    KILN_CHECK(!ckpt.empty(), "train", "--resume: no checkpoint in ", cfg.run_dir,
               "/checkpoints; start without --resume");
    load_checkpoint(ckpt, *model, full_opt ? *full_opt : opt, state);
    data->set_state(state.loader);
    if (writer) truncate_metrics(metrics_path, state.step);
    log_info("resumed from ", ckpt, " at step ", state.step);
  } else if (writer) {
    write_file_atomic(metrics_path, "");
  }
  if (shard) {
    scatter_training_state(*tpm, *model, *full_opt, m, opt);
    if (!writer) {  // only rank 0 gathers into the full model
      model.reset();
      full_opt.reset();
    }
  }
  comm.barrier();  // nobody reads the run directory before rank 0 has set it up
  std::ofstream metrics;
  if (writer) metrics.open(metrics_path, std::ios::app);

  TrainOptions topt{cfg.train.precision, cfg.train.recompute, cfg.train.recompute_layers};
  if (tpm) topt = tpm->train_options(topt, groups.tp.get(), cfg.parallel.sequence_parallel);
  const int Bl = B / dp;  // this rank's rows of each global batch
  TrainState ts(m, Bl, T, topt);
  Tensor grads = Tensor::zeros({m.num_params()});
  std::function<double(const float*)> tp_sum_squares;  // the whole model's gradient norm
  if (tpm) tp_sum_squares = [&](const float* g) { return tpm->grad_sum_squares(*groups.tp, g); };
  std::vector<int32_t> ids(size_t(B) * T), targets(size_t(B) * T);
  const int64_t tokens_per_step = int64_t(B) * T * accum;
  const bool fp16 = cfg.train.precision == Precision::fp16;
  LossScaler scaler(cfg.loss_scale);
  if (resume && fp16 && state.loss_scale > 0)
    scaler.restore(state.loss_scale, state.scale_growth, state.scale_hysteresis);
  log_info("precision ", name_of(cfg.train.precision), ", recompute ", name_of(cfg.train.recompute),
           "; weights+grads+AdamW ", (4 * m.weights().nbytes()) >> 20, " MiB, activations ",
           ts.bytes() >> 20, " MiB");
  TrainResult result;
  Progress progress("train", cfg.train.steps, "steps");
  double last_loss = NAN, last_val = NAN;
  int consecutive_skips = 0;

  for (int64_t step = state.step + 1; step <= cfg.train.steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    const float lr = lr_at(int(step), cfg.train.steps, cfg.optim.lr, cfg.optim.min_lr,
                           cfg.optim.warmup_steps, cfg.optim.schedule);
    const nlohmann::json before = data->state();
    const bool inject =
        std::find(cfg.train.inject_overflow_at.begin(), cfg.train.inject_overflow_at.end(), step) !=
        cfg.train.inject_overflow_at.end();
    double loss = 0, norm = 0;
    int skipped = 0;
    bool updated = false;
    for (;;) {
      const double scale = fp16 ? scaler.scale() : 1.0;
      std::memset(grads.raw(), 0, grads.nbytes());
      loss = 0;
      const size_t off = size_t(rank) * Bl * T;
      for (int micro = 0; micro < accum; ++micro) {
        data->next(B, ids.data(), targets.data());
        // The loss is a mean over the global batch's counted tokens: weight this rank's mean.
        const int64_t total =
            std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
        int64_t local = 0;
        for (size_t i = off; i < off + size_t(Bl) * T; ++i) local += targets[i] >= 0;
        const double w = total > 0 ? double(local) / double(total) : 0.0;
        loss += w * ts.step(m, ids.data() + off, targets.data() + off, grads.f32(),
                            float(scale / accum * w));
      }
      loss /= accum;
      if (dp > 1) {
        float l = float(loss);
        dpc.all_reduce(&l, 1);
        loss = l;
        dpc.all_reduce(grads.f32(), grads.numel());
      }
      float overflow = fp16 && fp16_overflow(grads.f32(), grads.numel());
      if (tp > 1)
        groups.tp->all_reduce(&overflow, 1, dist::ReduceOp::max);  // one verdict per tp group
      bool bad = !std::isfinite(loss) || overflow > 0 || (inject && skipped == 0);
      if (!bad) {
        if (fp16) ops::cpu::scale(grads.f32(), float(1.0 / scale), grads.numel());  // exact: 2^-k
        // A non-finite gradient norm also skips: nothing non-finite reaches the weights.
        updated =
            clip_and_step(m, opt, grads.f32(), lr, cfg.optim.grad_clip, &norm, tp_sum_squares);
        bad = !updated;
      }
      if (fp16) scaler.update(bad);
      if (!bad) break;
      ++skipped;
      // fp16 overflow above the minimum scale is the scaler doing its job: retry the same batch
      // at the lowered scale. Anything else skips the batch and counts towards the limit.
      const bool retry = fp16 && scale > cfg.loss_scale.min_scale;
      log_warn("step ", step, ": ", fp16 ? "fp16 overflow" : "non-finite loss or gradient",
               " at loss scale ", scale, "; update skipped",
               retry ? ", retrying at scale " + fmt("%g", scaler.scale()) : "");
      if (!retry) {
        KILN_CHECK(++consecutive_skips < cfg.train.max_skips, "train", cfg.train.max_skips,
                   " consecutive steps without a finite update, ending at step ", step,
                   ": the run diverged; lower optim.lr, raise optim.warmup_steps, or use bf16 ",
                   "instead of fp16");
        break;
      }
      data->set_state(before);
    }
    if (updated) {
      consecutive_skips = 0;
      ts.refresh_weights(m);
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.step = step;
    state.tokens_seen += tokens_per_step;
    last_loss = loss;
    nlohmann::json rec = {{"step", step},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", norm},
                          {"tokens", state.tokens_seen},
                          {"tokens_per_s", double(tokens_per_step) / dt},
                          {"step_ms", dt * 1e3},
                          {"peak_bytes", peak_rss_bytes()}};
    if (fp16) rec["loss_scale"] = scaler.scale();
    if (skipped || fp16) rec["skipped"] = skipped;
    if (!updated) rec["updated"] = false;
    const bool last = step == cfg.train.steps;
    if (has_val && cfg.train.eval_every > 0 && (step % cfg.train.eval_every == 0 || last)) {
      last_val = evaluate(m, ts, *data, B, cfg.train.eval_batches, dpc);
      rec["val_loss"] = last_val;
      rec["val_perplexity"] = std::exp(last_val);
    }
    if (writer) metrics << rec.dump() << "\n" << std::flush;
    if (writer)
      progress.update(step, "loss " + fmt("%.4f", loss) +
                                (std::isnan(last_val) ? "" : " val " + fmt("%.4f", last_val)) +
                                " lr " + fmt("%.2e", lr) + " " +
                                fmt("%.0f", double(tokens_per_step) / dt) + " tok/s");
    const bool save =
        (cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0) || last;
    if (save && shard && groups.plan.dp_rank == 0)  // rank 0's tp group gathers the shards
      gather_training_state(*tpm, *groups.tp, m, opt, model.get(), full_opt.get());
    if (writer && save) {
      state.loader = data->state();
      state.loss_scale = fp16 ? scaler.scale() : 0;
      state.scale_growth = scaler.growth();
      state.scale_hysteresis = scaler.hysteresis_left();
      result.checkpoint = save_checkpoint(
          cfg.run_dir, *model, tok, full_opt ? *full_opt : opt, state, cfg.train.keep_checkpoints,
          cfg.train.checkpoint_dtype == "bf16" ? DType::bf16 : DType::f32);
    }
  }
  comm.barrier();  // the last checkpoint is complete before any rank returns
  if (!writer) return result;
  progress.finish("loss " + fmt("%.4f", last_loss));
  if (result.checkpoint.empty()) result.checkpoint = latest_checkpoint(cfg.run_dir);
  result.final_loss = last_loss;
  result.final_val_loss = last_val;
  result.steps = state.step;

  for (int s = 0; s < cfg.train.samples; ++s) {
    SamplingParams sp;
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.seed = cfg.seed + s;
    const char* prompts[] = {"The ", "In the morning, ", "He said that ", "It was "};
    auto r = generate(*model, tok, prompts[s % 4], cfg.train.sample_tokens, sp);
    std::printf("--- sample %d ---\n%s%s\n", s + 1, prompts[s % 4], r.text.c_str());
  }
  std::fflush(stdout);
  return result;
}

}  // namespace kiln

#include "kiln/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
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
#include "kiln/train/cuda_train_state.h"
#include "kiln/train/dp_sharded_adamw.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/optimizer.h"
#include "kiln/train/pipeline.h"
#include "kiln/train/schedule.h"
#include "kiln/train/sharded_checkpoint.h"
#include "kiln/train/tensor_parallel_state.h"
#include "kiln/train/zero.h"

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
// parallelism each rank computes its rows from row0 (`forward` returns their mean loss and
// counted targets) and the token-weighted sums are all-reduced over the world (with a pipeline,
// the last stages hold the losses and the others add 0), so every layout reports the
// single-process figure (up to summation order).
using EvalForward = std::function<double(const int* ids, const int* targets, int64_t* counted)>;
double evaluate(const BatchSource& val, int B, int T, int row0, int max_batches,
                const std::function<double(double)>& sum_shares, const EvalForward& forward) {
  int64_t n = std::min<int64_t>(max_batches, val.eval_batches_available(B));
  if (n <= 0) return NAN;
  std::vector<int32_t> ids(size_t(B) * T), tg(size_t(B) * T);
  const size_t off = size_t(row0) * T;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    val.eval_batch(int(i), B, ids.data(), tg.data());
    const int64_t total = std::count_if(tg.begin(), tg.end(), [](int32_t t) { return t >= 0; });
    int64_t counted = 0;
    const double mean = forward(ids.data() + off, tg.data() + off, &counted);
    sum += sum_shares(mean * double(counted) / double(std::max<int64_t>(total, 1)));
  }
  return sum / double(n);
}

// Every rank must train the same configuration: a rank started with other overrides would
// silently compute something else. Compares a hash of each rank's resolved YAML across the world.
void check_same_config(const TrainConfig& cfg, dist::Comm& comm) {
  if (comm.size() == 1) return;
  uint64_t h = 1469598103934665603ull;  // FNV-1a, kept to 63 bits for all_gather_exact
  for (unsigned char c : cfg.yaml) h = (h ^ c) * 1099511628211ull;
  const std::vector<uint64_t> all = dist::all_gather_exact(comm, h >> 1);
  std::string differ;
  for (int r = 1; r < comm.size(); ++r)
    if (all[size_t(r)] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  KILN_CHECK(differ.empty(), "train", "rank(s) ", differ,
             " were started with a different configuration than rank 0 (config file or ",
             "overrides differ); start every rank with the same config and overrides");
}

// The largest of every rank's x >= 0, exactly.
int64_t max_over_ranks(int64_t x, dist::Comm& comm) {
  if (comm.size() == 1) return x;
  const std::vector<uint64_t> all = dist::all_gather_exact(comm, uint64_t(x));
  return int64_t(*std::max_element(all.begin(), all.end()));
}

// The whole model's gradient L2 norm from this rank's part, the same on every rank: parameters a
// tensor-parallel shard replicates count on tp rank 0 only, the last pipeline stage's copy of a
// tied embedding not at all (the first stage's counts); the rest is summed over tp and pp.
double whole_grad_norm(const Model& m, const float* g, const TensorParallelMap* tpm, dist::Comm* tp,
                       dist::Comm* pp) {
  const bool tied_copy = pp && pp->rank() > 0;
  double sq = 0;
  for (const ParamInfo& p : m.params()) {
    if (tied_copy && is_token_embedding(p.name)) continue;
    if (tpm && tpm->rank() != 0 && tpm->replicated(p.name)) continue;
    sq += ops::cpu::sum_squares(g + p.offset, p.numel());
  }
  if (tpm) sq = dist::all_reduce_sum(*tp, sq);
  if (pp) sq = dist::all_reduce_sum(*pp, sq);
  return std::sqrt(sq);
}

// The whole model and its optimizer state on world rank 0, from the parts this rank's layout
// holds: rank 0's pipeline group gathers its stages, then its tensor-parallel group the shards.
// Collective over those groups; other ranks return an empty result.
GatheredModel gather_part(const Model& m, AdamW& opt, const AdamWConfig& cfg,
                          const ModelConfig& whole_cfg, const TensorParallelMap* tpm,
                          const dist::ProcessGroups& g) {
  if (g.plan.dp_rank != 0) return {};
  GatheredModel shard;  // this tp rank's whole shard, on pipeline stage 0
  if (g.plan.pp > 1) shard = gather_stages(m, opt, cfg, *g.pp);
  if (!tpm || g.plan.pp_rank != 0) return shard;
  GatheredModel whole;
  if (g.plan.tp_rank == 0) {
    whole.model = std::make_unique<Model>(whole_cfg);
    whole.opt = std::make_unique<AdamW>(*whole.model, cfg);
  }
  gather_training_state(*tpm, *g.tp, shard.model ? *shard.model : m, shard.opt ? *shard.opt : opt,
                        whole.model.get(), whole.opt.get());
  return whole;
}

}  // namespace

TrainResult train(TrainConfig cfg, bool resume, dist::Comm* comm_arg) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  // The layout (dist/groups.h, Megatron's rank order): tp ranks hold shards of one model
  // (model/tensor_parallel.h) and compute the same rows together; pp stages hold consecutive
  // layers (pipeline.h); dp ranks hold the same part, draw the same global batch, compute their
  // slice of it, and sum their gradients before the (identical) update. Without tp and pp the
  // sum runs in buckets overlapped with backward, sharded by parallel.zero (zero.h); otherwise
  // after the step. Rank 0 alone writes the run directory, one gathered checkpoint.
  dist::SingleComm single;
  dist::Comm& comm = comm_arg ? *comm_arg : single;
  check_same_config(cfg, comm);
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp;
  KILN_CHECK(cfg.parallel.checkpoint == "gathered" || cfg.train.checkpoint_dtype == "fp32", "train",
             "train.checkpoint_dtype = ", cfg.train.checkpoint_dtype,
             " applies to gathered checkpoints; sharded checkpoints keep the fp32 state: use ",
             "parallel.checkpoint = gathered, or checkpoint_dtype = fp32");
  KILN_CHECK(cfg.parallel.zero <= 1 || pp == 1, "train", "parallel.zero = ", cfg.parallel.zero,
             " with parallel.pp = ", pp,
             " is not supported: ZeRO-2 and -3 shard the gradients and weights of whole layers "
             "per step, which a pipeline's interleaved micro-batches do not allow (DeepSpeed "
             "refuses the combination too); use parallel.zero = 1 (the optimizer state sharded "
             "over dp, as Megatron's distributed optimizer) or 0");
  KILN_CHECK(cfg.parallel.zero < 3 || cfg.train.precision == Precision::fp32, "train",
             "parallel.zero = 3 supports train.precision = fp32 only (the ",
             name_of(cfg.train.precision),
             " GEMM weight copy is made from the whole weights); use parallel.zero <= 2 or fp32");
  const bool on_gpu = cfg.device == "cuda";
  KILN_CHECK(!on_gpu || cfg.train.recompute == Recompute::none, "train",
             "train.recompute = ", name_of(cfg.train.recompute),
             " is not available on device: cuda (it keeps every activation); use recompute: none "
             "or a smaller train.batch_size with train.grad_accum");
  KILN_CHECK(!on_gpu || comm.size() == 1, "train",
             "device: cuda trains on one GPU in one process for now; run without mpirun/srun, or "
             "use device: cpu for the parallel layouts");
  dist::ProcessGroups groups = dist::make_groups(comm, tp, pp);
  const int dp = groups.plan.dp;
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
  const ModelConfig whole_cfg = model->config();
  KILN_CHECK(whole_cfg.vocab_size >= tok.vocab_size(), "train", "the model's vocab_size (",
             whole_cfg.vocab_size, ") is smaller than the tokenizer's (", tok.vocab_size(),
             "); raise model.vocab_size or omit it to take the tokenizer's");

  if (cfg.data.blend.empty() && !cfg.data.mock) {
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
  if (cfg.data.mock) spec.mock_vocab = whole_cfg.vocab_size;
  std::unique_ptr<BatchSource> data = open_batch_source(
      spec, tok, T, cfg.seed, int64_t(cfg.train.steps) * cfg.train.batch_size * accum);
  const bool has_val = data->eval_batches_available(B) > 0;
  log_info("data: ", data->describe(), "; model: ", model->num_params(), " parameters");

  const AdamWConfig adamw{cfg.optim.beta1, cfg.optim.beta2, cfg.optim.eps, cfg.optim.weight_decay};
  TrainerState state;
  // The optimizer state of what this rank trains (the whole model's until it is cut down).
  std::unique_ptr<AdamW> opt;
  const std::string metrics_path = cfg.run_dir + "/metrics.jsonl";
  if (resume) {
    std::string ckpt = latest_checkpoint(cfg.run_dir);
    KILN_CHECK(!ckpt.empty(), "train", "--resume: no checkpoint in ", cfg.run_dir,
               "/checkpoints; start without --resume");
    opt = std::make_unique<AdamW>(*model, adamw);
    load_checkpoint(ckpt, *model, *opt, state);
    data->set_state(state.loader);
    if (writer) truncate_metrics(metrics_path, state.step);
    log_info("resumed from ", ckpt, " at step ", state.step);
  } else if (writer) {
    write_file_atomic(metrics_path, "");
  }
  comm.barrier();  // nobody reads the run directory before rank 0 has set it up
  std::ofstream metrics;
  if (writer) metrics.open(metrics_path, std::ios::app);

  // Every rank starts from the whole model (built or loaded identically) and keeps its part:
  // its tensor-parallel shard, then its pipeline stage of that.
  TrainOptions topt{cfg.train.precision, cfg.train.recompute, cfg.train.recompute_layers};
  std::unique_ptr<TensorParallelMap> tpm;
  if (tp > 1 || pp > 1) {
    if (!opt) opt = std::make_unique<AdamW>(*model, adamw);
    if (tp > 1) {
      tpm = std::make_unique<TensorParallelMap>(whole_cfg, tp, groups.plan.tp_rank);
      auto shard = std::make_unique<Model>(tpm->config());
      auto shard_opt = std::make_unique<AdamW>(*shard, adamw);
      scatter_training_state(*tpm, *model, *opt, *shard, *shard_opt);
      model = std::move(shard);
      opt = std::move(shard_opt);
      topt = tpm->train_options(topt, groups.tp.get(), cfg.parallel.sequence_parallel);
    }
    if (pp > 1)
      keep_stage(model, *opt, adamw, pipeline_stage(model->config(), pp, groups.plan.pp_rank));
  }
  Model& m = *model;
  const int Bl = B / dp, row0 = groups.plan.dp_rank * Bl;  // this rank's rows of each batch
  // A whole model: ZeroAdamW, which also syncs the gradients during backward (StepHooks).
  // A shard or a stage: plain AdamW on its gradient, summed over dp after the step.
  std::unique_ptr<TrainState> ts;
  std::unique_ptr<Pipeline> pipe;
  std::unique_ptr<ZeroAdamW> zero;
  std::unique_ptr<DpShardedAdamW> dsopt;
  std::unique_ptr<CudaTrainState> gpu;  // device: cuda
  Tensor grads;
  if (on_gpu) {
    gpu = std::make_unique<CudaTrainState>(m, Bl, T, cfg.train.precision, cfg.train.tf32, adamw);
    if (opt) gpu->upload_optimizer(*opt);  // resumed
  } else if (pp > 1) {
    pipe = std::make_unique<Pipeline>(
        m, Bl, T, topt, pipe_schedule_from_name(cfg.parallel.schedule), accum, *groups.pp);
  } else {
    ts = std::make_unique<TrainState>(m, Bl, T, topt);
  }
  // A whole model or a tensor-parallel shard of one: ZeroAdamW takes its shard of the state.
  if (gpu) {
    // The GPU holds the weights, gradients and moments (cuda_train_state.h).
  } else if (pp == 1 && (tp == 1 || cfg.parallel.zero > 0)) {
    zero = std::make_unique<ZeroAdamW>(m, *groups.dp, cfg.parallel.zero, cfg.parallel.bucket_mb,
                                       adamw, opt.get());
    opt.reset();
    if (tpm) {  // the norm over the whole model: replicated parameters on tp rank 0 only
      zero->norm_over_tensor_parallel(groups.tp.get(), [&](int64_t flat) {
        for (const ParamInfo& p : m.params())
          if (flat >= p.offset && flat < p.offset + p.numel())
            return tpm->rank() == 0 || !tpm->replicated(p.name);
        return true;
      });
    }
  } else {
    grads = Tensor::zeros({m.num_params()});
    if (cfg.parallel.zero == 1) {  // the part's moments sharded over dp (dp_sharded_adamw.h)
      dsopt = std::make_unique<DpShardedAdamW>(m, *groups.dp, adamw, *opt);
      opt.reset();
    }
  }
  // The ranks' shares of a loss summed: over dp, and over pp for a pipeline (0 off its last
  // stage); the tp ranks of a group hold the same value.
  auto sum_shares = [&](double x) {
    float f = float(x);
    if (dp > 1) groups.dp->all_reduce(&f, 1);
    if (pipe) groups.pp->all_reduce(&f, 1);
    return double(f);
  };
  // Persistent per-rank bytes of weights, gradients and AdamW moments.
  const int64_t state_bytes = gpu     ? int64_t(gpu->state_bytes())
                              : zero  ? zero->state_bytes()
                              : dsopt ? 2 * m.weights().nbytes() + dsopt->state_bytes()
                                      : 4 * m.weights().nbytes();
  // A plain-AdamW rank's bytes sent per step besides the Pipeline's and TrainState's own
  // counts: its gradient all-reduce over dp and the loss's.
  const int64_t plain_extra_bytes = zero || gpu ? 0
                                                : dist::all_reduce_bytes(dp, grads.numel()) +
                                                      dist::all_reduce_bytes(dp, 1) +
                                                      (pipe ? dist::all_reduce_bytes(pp, 1) : 0);
  std::vector<int32_t> ids(size_t(B) * T), targets(size_t(B) * T);
  const int64_t tokens_per_step = int64_t(B) * T * accum;
  const bool fp16 = cfg.train.precision == Precision::fp16;
  LossScaler scaler(cfg.loss_scale);
  if (resume && fp16 && state.loss_scale > 0)
    scaler.restore(state.loss_scale, state.scale_growth, state.scale_hysteresis);
  log_info("precision ", name_of(cfg.train.precision), ", recompute ", name_of(cfg.train.recompute),
           ", dp ", dp, " x tp ", tp, " x pp ", pp,
           dsopt ? ", zero 1 (moments sharded over dp)" : "",
           zero ? ", zero " + std::to_string(zero->stage()) + ", " +
                      std::to_string(zero->layout().chunks.size()) + " gradient buckets"
                : "",
           "; weights+grads+AdamW ", state_bytes >> 20, " MiB per rank (state_bytes ", state_bytes,
           "), activations ",
           (gpu    ? gpu->activation_bytes()
            : pipe ? pipe->bytes()
                   : ts->bytes()) >>
               20,
           " MiB", gpu ? " on " + cuda_device_name() : std::string());
  TrainResult result;
  Progress progress("train", cfg.train.steps, "steps");
  double last_loss = NAN, last_val = NAN;
  int consecutive_skips = 0;

  const int64_t first_step = state.step + 1;
  for (int64_t step = first_step; step <= cfg.train.steps; ++step) {
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
      loss = 0;
      const size_t off = size_t(row0) * T;
      if (ts) ts->reset_comm_bytes();
      if (pipe) {
        std::memset(grads.raw(), 0, grads.nbytes());
        loss = pipe->train_step(m, *data, B, row0, grads.f32(), scale);
      } else {
        if (zero) zero->begin_step();
        if (gpu) gpu->zero_grads();
        if (grads.defined()) std::memset(grads.raw(), 0, grads.nbytes());
        for (int micro = 0; micro < accum; ++micro) {
          data->next(B, ids.data(), targets.data());
          // The loss is a mean over the global batch's counted tokens: weight this rank's mean.
          const int64_t total =
              std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; });
          int64_t local = 0;
          for (size_t i = off; i < off + size_t(Bl) * T; ++i) local += targets[i] >= 0;
          const double w = total > 0 ? double(local) / double(total) : 0.0;
          const float micro_scale = float(scale / accum * w);
          if (gpu) {
            loss += w * gpu->step(ids.data() + off, targets.data() + off, true, micro_scale);
          } else if (zero) {
            zero->begin_micro(micro == accum - 1);
            loss +=
                w * ts->step(m, ids.data() + off, targets.data() + off, *zero, true, micro_scale);
          } else {
            loss +=
                w * ts->step(m, ids.data() + off, targets.data() + off, grads.f32(), micro_scale);
          }
        }
        if (zero) zero->finish_backward();
        loss /= accum;
      }
      if (gpu) {
        // One process, one GPU: nothing to sum.
      } else if (zero) {
        if (dp > 1) loss = zero->sum_over_ranks(float(loss));
      } else {
        loss = sum_shares(loss);
        if (dp > 1) groups.dp->all_reduce(grads.f32(), grads.numel());
        if (pipe) pipe->reduce_tied_embedding(m, grads.f32());
      }
      float overflow =
          fp16 && (zero ? zero->fp16_overflow() : fp16_overflow(grads.f32(), grads.numel()));
      bool bad = !std::isfinite(loss) || overflow > 0 || (inject && skipped == 0);
      // The whole model skips together: every shard and every stage.
      if (tp > 1) {
        float f = bad ? 1.0f : 0.0f;
        groups.tp->all_reduce(&f, 1, dist::ReduceOp::max);
        bad = f > 0;
      }
      if (pipe) bad = pipe->any_stage(bad);
      if (!bad) {
        // Unscaling is exact (2^-k). A non-finite gradient norm also skips: nothing non-finite
        // reaches the weights.
        if (gpu) {
          norm = gpu->grad_norm();
          updated = gpu->clip_and_step(lr, cfg.optim.grad_clip, norm);
        } else if (zero) {
          if (fp16) zero->scale_grads(float(1.0 / scale));
          updated = zero->clip_and_step(lr, cfg.optim.grad_clip, &norm);
        } else {
          if (fp16) ops::cpu::scale(grads.f32(), float(1.0 / scale), grads.numel());
          norm = whole_grad_norm(m, grads.f32(), tpm.get(), groups.tp.get(),
                                 pipe ? groups.pp.get() : nullptr);
          if (!dsopt) {
            updated = clip_and_step_at(m, *opt, grads.f32(), lr, cfg.optim.grad_clip, norm);
          } else if (std::isfinite(norm)) {
            if (cfg.optim.grad_clip > 0 && norm > cfg.optim.grad_clip)
              ops::cpu::scale(grads.f32(), float(cfg.optim.grad_clip / norm), grads.numel());
            dsopt->step(grads.f32(), lr);
            updated = true;
          }
        }
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
      if (pipe)
        pipe->refresh_weights(m);
      else if (ts)
        ts->refresh_weights(m);  // (the GPU's AdamW refreshes its bf16 copy itself)
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.step = step;
    state.tokens_seen += tokens_per_step;
    last_loss = loss;
    result.comm_bytes = gpu    ? 0
                        : zero ? zero->comm_bytes() + ts->comm_bytes()
                        : pipe ? pipe->comm_bytes() + plain_extra_bytes
                               : ts->comm_bytes() + plain_extra_bytes;
    if (dsopt) result.comm_bytes += dsopt->comm_bytes();
    if (step == first_step && comm.size() > 1)
      log_info("step ", step, " sent ", result.comm_bytes, " bytes on rank 0 (comm_bytes)");
    result.losses.push_back(loss);
    result.step_ms.push_back(dt * 1e3);
    nlohmann::json rec = {{"step", step},
                          {"loss", loss},
                          {"lr", lr},
                          {"grad_norm", norm},
                          {"tokens", state.tokens_seen},
                          {"tokens_per_s", double(tokens_per_step) / dt},
                          {"step_ms", dt * 1e3},
                          {"peak_bytes", peak_rss_bytes()},
                          {"state_bytes", state_bytes},
                          {"comm_bytes", result.comm_bytes}};
    if (fp16) rec["loss_scale"] = scaler.scale();
    if (skipped || fp16) rec["skipped"] = skipped;
    if (!updated) rec["updated"] = false;
    const bool last = step == cfg.train.steps;
    if (has_val && cfg.train.eval_every > 0 && (step % cfg.train.eval_every == 0 || last)) {
      last_val = evaluate(*data, B, T, row0, cfg.train.eval_batches, sum_shares,
                          [&](const int* ids, const int* tg, int64_t* counted) {
                            if (pipe) return pipe->eval_step(m, ids, tg, counted);
                            if (gpu) {
                              const double mean = gpu->step(ids, tg, false);
                              *counted = gpu->counted_tokens();
                              return mean;
                            }
                            const double mean = zero ? ts->step(m, ids, tg, *zero, false)
                                                     : ts->step(m, ids, tg, nullptr);
                            *counted = ts->counted_tokens();
                            return mean;
                          });
      rec["val_loss"] = last_val;
      rec["val_perplexity"] = std::exp(last_val);
    }
    if (writer) metrics << rec.dump() << "\n" << std::flush;
    if (writer)
      progress.update(step, "loss " + fmt("%.4f", loss) +
                                (std::isnan(last_val) ? "" : " val " + fmt("%.4f", last_val)) +
                                " lr " + fmt("%.2e", lr) + " " +
                                fmt("%.0f", double(tokens_per_step) / dt) + " tok/s");
    if ((cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0) ||
        (last && cfg.train.final_checkpoint)) {
      state.loader = data->state();
      state.loss_scale = fp16 ? scaler.scale() : 0;
      state.scale_growth = scaler.growth();
      state.scale_hysteresis = scaler.hysteresis_left();
      if (dsopt) opt = dsopt->gather();  // the part's whole moments, for the checkpoint
      if (gpu) {                         // the device's weights and moments, for the checkpoint
        if (!opt) opt = std::make_unique<AdamW>(m, adamw);
        gpu->download(m, *opt);
      }
      if (cfg.parallel.checkpoint == "sharded") {
        // Every rank writes what it owns (one copy per dp group unless ZeRO shards it).
        StatePieces mine = zero ? to_whole_layout(zero->state_pieces(), m, tpm.get())
                           : groups.plan.dp_rank == 0 ? model_pieces(m, *opt, tpm.get())
                                                      : StatePieces{};
        result.checkpoint = save_sharded_checkpoint(
            cfg.run_dir, mine, comm, whole_cfg, tok, zero ? zero->steps() : opt->steps(), state,
            {{"dp", dp}, {"tp", tp}, {"pp", pp}, {"zero", cfg.parallel.zero}},
            cfg.train.keep_checkpoints);
      } else {
        // Collective: one whole checkpoint, written by rank 0. Under ZeRO every rank gathers the
        // shards; otherwise rank 0's pipeline group gathers the stages, then its tp group the
        // shards.
        GatheredModel whole = zero ? GatheredModel{nullptr, zero->gather_optimizer()}
                                   : gather_part(m, *opt, adamw, whole_cfg, tpm.get(), groups);
        if (zero) zero->gather_weights();
        // A tensor-parallel shard's whole state is on dp rank 0: its tp group gathers the model.
        if (zero && tpm && groups.plan.dp_rank == 0)
          whole = gather_part(m, *whole.opt, adamw, whole_cfg, tpm.get(), groups);
        if (writer)
          result.checkpoint =
              save_checkpoint(cfg.run_dir, whole.model ? *whole.model : m, tok,
                              whole.opt ? *whole.opt : *opt, state, cfg.train.keep_checkpoints,
                              cfg.train.checkpoint_dtype == "bf16" ? DType::bf16 : DType::f32);
        if (zero) zero->release_weights();
      }
      if (dsopt) opt.reset();
    }
  }
  if (zero) zero->gather_weights();   // ZeRO-3: the whole model again, for the samples
  if (gpu) gpu->download_weights(m);  // the trained weights, for the samples
  result.state_bytes = max_over_ranks(state_bytes, comm);
  result.comm_bytes = max_over_ranks(result.comm_bytes, comm);
  comm.barrier();  // the last checkpoint is complete before any rank returns
  if (!writer) return result;
  progress.finish("loss " + fmt("%.4f", last_loss));
  if (result.checkpoint.empty()) result.checkpoint = latest_checkpoint(cfg.run_dir);
  result.final_loss = last_loss;
  result.final_val_loss = last_val;
  result.steps = state.step;

  // Rank 0 holds part of the model under tensor or pipeline parallelism: sample from the
  // checkpoint it wrote (none: no samples).
  int samples = cfg.train.samples;
  if ((tpm || pipe) && samples > 0) {
    if (result.checkpoint.empty()) {
      samples = 0;
    } else {
      model = load_model(result.checkpoint);
    }
  }
  for (int s = 0; s < samples; ++s) {
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

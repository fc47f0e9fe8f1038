#include "kiln/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/batch_source.h"
#include "kiln/data/sft_dataset.h"
#include "kiln/dist/comm.h"
#include "kiln/dist/groups.h"
#include "kiln/infer/generate.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/model/model_io.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/schedule.h"
#include "kiln/train/sharded_checkpoint.h"
#include "kiln/train/step_runner.h"

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
// parallelism each rank computes its rows (StepRunner::eval returns their mean loss and counted
// targets) and the token-weighted sums are summed over the ranks (with a pipeline, the last
// stages hold the losses and the others add 0), so every layout reports the single-process
// figure (up to summation order).
double evaluate(const BatchSource& val, int B, int T, int max_batches, StepRunner& runner) {
  int64_t n = std::min<int64_t>(max_batches, val.eval_batches_available(B));
  if (n <= 0) return NAN;
  std::vector<int32_t> ids(size_t(B) * T), tg(size_t(B) * T);
  const size_t off = size_t(runner.row0()) * T;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    val.eval_batch(int(i), B, ids.data(), tg.data());
    const int64_t total = std::count_if(tg.begin(), tg.end(), [](int32_t t) { return t >= 0; });
    int64_t counted = 0;
    runner.set_positions(nullptr);  // validation rows hold one sequence each
    const double mean = runner.eval(ids.data() + off, tg.data() + off, &counted);
    sum += runner.sum_shares(mean * double(counted) / double(std::max<int64_t>(total, 1)));
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

// The combinations the layouts do not support, refused before anything is built.
void check_layout(const TrainConfig& cfg, const dist::Comm& comm) {
  const int pp = cfg.parallel.pp;
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
  const bool on_gpu = cfg.device == Device::cuda;
  KILN_CHECK(!cfg.data.packing || !on_gpu, "train",
             "data.packing runs on the CPU for now; use data.packing: false or device: cpu");
  KILN_CHECK(!on_gpu || cfg.train.recompute == Recompute::none, "train",
             "train.recompute = ", name_of(cfg.train.recompute),
             " is not available on device: cuda (it keeps every activation); use recompute: none "
             "or a smaller train.batch_size with train.grad_accum");
  KILN_CHECK(!on_gpu || comm.size() == 1, "train",
             "device: cuda trains on one GPU in one process for now; run without mpirun/srun, or "
             "use device: cpu for the parallel layouts");
  if (cfg.trains_adapter()) {
    KILN_CHECK(cfg.parallel.tp == 1 && pp == 1 && cfg.parallel.zero == 0 && !on_gpu, "train",
               "method ", cfg.method, " runs on the CPU with data parallelism only for now (the ",
               "adapter is small, its state needs no sharding); use parallel.tp = 1, pp = 1, ",
               "zero = 0 and device: cpu");
    KILN_CHECK(cfg.parallel.checkpoint == "gathered", "train", "method ", cfg.method,
               " checkpoints the adapter, one file per run; use parallel.checkpoint = gathered");
    KILN_CHECK(cfg.method != "qlora" || cfg.train.precision != Precision::fp16, "train",
               "method qlora computes in bf16 (or fp32); use train.precision = bf16");
  }
}

// The largest of every rank's x >= 0, exactly.
int64_t max_over_ranks(int64_t x, dist::Comm& comm) {
  if (comm.size() == 1) return x;
  const std::vector<uint64_t> all = dist::all_gather_exact(comm, uint64_t(x));
  return int64_t(*std::max_element(all.begin(), all.end()));
}

// The whole model, built from cfg.model (its vocabulary and end token from the tokenizer's
// where the config leaves them) or loaded from cfg.init_from, whose config then replaces it.
// `gguf`: the base, when init_from is a GGUF file (loaded once, its model taken from it here).
std::unique_ptr<Model> build_model(TrainConfig& cfg, const Tokenizer& tok, quant::GgufModel* gguf) {
  std::unique_ptr<Model> model;
  if (!cfg.init_from.empty()) {
    model = gguf ? std::move(gguf->model) : load_model(resolve_model_dir(cfg.init_from));
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
  return model;
}

// The tokenizer data.tokenizer names; by default the base model's (init_from), else byte-level.
Tokenizer load_training_tokenizer(const TrainConfig& cfg, quant::GgufModel* gguf) {
  const std::string& name = cfg.data.tokenizer;
  if (name == "byte" || (name.empty() && cfg.init_from.empty()))
    return Tokenizer::byte_level({"<|endoftext|>"});
  if (!name.empty()) return Tokenizer::load(name);
  if (gguf) return std::move(gguf->tokenizer);  // taken: the base is read once
  const std::string dir = resolve_model_dir(cfg.init_from);
  KILN_CHECK(file_exists(dir + "/tokenizer.json"), "train", "the base model '", dir,
             "' has no tokenizer.json; name one with data.tokenizer (or byte)");
  return Tokenizer::load(dir + "/tokenizer.json");
}

// The template that renders SFT `messages`: data.chat_template, else the base model's, else
// kiln's default (guanaco).
ChatTemplate sft_chat_template(const TrainConfig& cfg, const Tokenizer& tok) {
  const std::string& name = cfg.data.chat_template;
  if (name == "guanaco") return ChatTemplate::guanaco();
  if (name == "chatml") return ChatTemplate::load(kChatmlTemplate, {}, "chatml");
  if (!name.empty()) return ChatTemplate::load(read_file(name), {}, name);
  if (!cfg.init_from.empty()) {
    const std::string where =
        quant::is_gguf_path(cfg.init_from) ? cfg.init_from : resolve_model_dir(cfg.init_from);
    return find_chat_template(where, &tok);
  }
  return ChatTemplate::guanaco();
}

// `chat`: the template SFT data is rendered with (sft_chat_template), when data.sft is set.
std::unique_ptr<BatchSource> open_data(const TrainConfig& cfg, const Tokenizer& tok,
                                       const ChatTemplate* chat) {
  if (chat) {
    SftSpec spec;
    spec.train = cfg.data.sft;
    spec.val = cfg.data.val;
    spec.val_fraction = cfg.data.val_fraction;
    spec.options.max_seq_length = cfg.data.max_seq_length;
    spec.options.assistant_only_loss = cfg.data.loss == "assistant";
    spec.packing = cfg.data.packing;
    log_info("SFT data: messages rendered with the ",
             chat->is_default() ? "default (guanaco)" : chat->origin(), " chat template");
    return open_sft_source(spec, tok, *chat, cfg.train.seq_len, cfg.seed);
  }
  if (cfg.data.blend.empty() && !cfg.data.mock) {
    log_info("tokenizing ", cfg.data.train.size(), " file(s) with a ", tok.vocab_size(),
             "-token vocabulary");
  }
  DataSpec spec;
  spec.train_files = cfg.data.train;
  spec.val_file = cfg.data.val;
  spec.val_fraction = cfg.data.val_fraction;
  spec.blend = cfg.data.blend;
  spec.split = cfg.data.split;
  if (cfg.data.mock) spec.mock_vocab = cfg.model.vocab_size;
  return open_batch_source(spec, tok, cfg.train.seq_len, cfg.seed,
                           int64_t(cfg.train.steps) * cfg.train.batch_size * cfg.train.grad_accum);
}

// One optimizer step as the metrics record it.
struct StepRecord {
  double loss = 0, norm = 0;
  int skipped = 0;  // tries that did not update
  bool updated = false;
};

// Step `step` through the runner, retrying after an fp16 overflow above the minimum loss scale
// (the same batch at the lowered scale). Anything else that prevents the update skips the batch
// and counts towards train.max_skips consecutive ones, which end the run.
StepRecord run_step(StepRunner& runner, BatchSource& data, LossScaler& scaler,
                    const TrainConfig& cfg, int64_t step, float lr, int& consecutive_skips) {
  const bool fp16 = cfg.train.precision == Precision::fp16;
  const nlohmann::json before = data.state();
  const auto& inject = cfg.train.inject_overflow_at;
  const bool injected = std::find(inject.begin(), inject.end(), step) != inject.end();
  StepRecord rec;
  for (;;) {
    const double scale = fp16 ? scaler.scale() : 1.0;
    const StepRunner::Outcome o = runner.step(data, lr, scale, injected && rec.skipped == 0);
    rec.loss = o.loss;
    if (o.norm_taken) rec.norm = o.norm;
    rec.updated = o.updated;
    if (fp16) scaler.update(!o.updated);
    if (o.updated) break;
    ++rec.skipped;
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
    data.set_state(before);
  }
  if (rec.updated) consecutive_skips = 0;
  return rec;
}

// The newest checkpoint of cfg.run_dir, for --resume.
std::string resume_checkpoint(const TrainConfig& cfg) {
  std::string ckpt = latest_checkpoint(cfg.run_dir);
  KILN_CHECK(!ckpt.empty(), "train", "--resume: no checkpoint in ", cfg.run_dir,
             "/checkpoints; start without --resume");
  return ckpt;
}

// The runner over `model`, resumed from checkpoint `ckpt` when not empty: the whole model's
// weights and optimizer state (or, with method lora, the adapter's), `state` and the data
// position. The writer drops the metrics records after the checkpoint's step.
std::unique_ptr<StepRunner> start_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                         std::unique_ptr<Model> model, const std::string& ckpt,
                                         BatchSource& data, TrainerState& state, bool writer) {
  std::unique_ptr<AdamW> opt;
  const bool lora = cfg.trains_adapter();
  if (!ckpt.empty() && !lora) {
    opt = std::make_unique<AdamW>(*model, adamw_config(cfg));
    load_checkpoint(ckpt, *model, *opt, state);
  }
  auto runner = make_step_runner(cfg, groups, std::move(model), std::move(opt));
  if (ckpt.empty()) return runner;
  if (lora) {
    const AdapterState ad = runner->adapter();
    load_lora_checkpoint(ckpt, *ad.base, *ad.weights, *ad.opt, state);
  }
  data.set_state(state.loader);
  if (writer) truncate_metrics(cfg.run_dir + "/metrics.jsonl", state.step);
  log_info("resumed from ", ckpt, " at step ", state.step);
  return runner;
}

// One metrics.jsonl record (evaluation adds val_loss); scaler: fp16's, else null; moe: the
// routing's statistics of a Mixture-of-Experts model, else null.
nlohmann::json metrics_record(int64_t step, const StepRecord& s, float lr, int64_t tokens,
                              int64_t tokens_per_step, double dt, int64_t state_bytes,
                              int64_t comm_bytes, const LossScaler* scaler, const MoeStats* moe) {
  nlohmann::json rec = {{"step", step},
                        {"loss", s.loss},
                        {"lr", lr},
                        {"grad_norm", s.norm},
                        {"tokens", tokens},
                        {"tokens_per_s", double(tokens_per_step) / dt},
                        {"step_ms", dt * 1e3},
                        {"peak_bytes", peak_rss_bytes()},
                        {"state_bytes", state_bytes},
                        {"comm_bytes", comm_bytes}};
  if (scaler) rec["loss_scale"] = scaler->scale();
  if (moe) {  // the routing of the step's last micro-batch on rank 0
    rec["moe_aux_loss"] = moe->aux();
    rec["moe_z_loss"] = moe->z();
    rec["moe_dropped"] = moe->dropped;
    rec["expert_fractions"] = moe->fractions();
  }
  if (s.skipped || scaler) rec["skipped"] = s.skipped;
  if (!s.updated) rec["updated"] = false;
  return rec;
}

// Collective: one checkpoint of the runner's state, gathered (written by rank 0) or sharded
// (every rank writes what it owns). Returns its directory (gathered: on rank 0 only).
// chat_template: the source of the template SFT data was rendered with, when it is not kiln's
// default; saved as the checkpoint's tokenizer_config.json so chat and serve render the same way.
std::string write_checkpoint(StepRunner& runner, const TrainConfig& cfg, dist::Comm& comm,
                             const dist::GroupPlan& plan, const ModelConfig& whole_cfg,
                             const Tokenizer& tok, const TrainerState& state,
                             const std::string& chat_template) {
  std::string dir;
  if (const AdapterState ad = runner.adapter(); ad.weights) {
    if (comm.rank() == 0)
      dir = save_lora_checkpoint(cfg.run_dir, *ad.weights, tok, *ad.opt, state,
                                 cfg.train.keep_checkpoints);
  } else if (cfg.parallel.checkpoint == "sharded") {
    const StatePieces mine = runner.sharded_pieces();
    dir = save_sharded_checkpoint(
        cfg.run_dir, mine, comm, whole_cfg, tok, runner.optimizer_steps(), state,
        {{"dp", plan.dp}, {"tp", plan.tp}, {"pp", plan.pp}, {"zero", cfg.parallel.zero}},
        cfg.train.keep_checkpoints);
  } else {
    const WholeState whole = runner.gather_whole();
    if (comm.rank() == 0)
      dir = save_checkpoint(cfg.run_dir, *whole.model, tok, *whole.opt, state,
                            cfg.train.keep_checkpoints,
                            cfg.train.checkpoint_dtype == "bf16" ? DType::bf16 : DType::f32);
  }
  if (comm.rank() == 0 && !dir.empty() && !chat_template.empty())
    write_json_file_atomic(dir + "/tokenizer_config.json", {{"chat_template", chat_template}});
  runner.checkpoint_done();
  return dir;
}

// train.samples generations from the trained model (or, when this rank held only a part, from
// the last checkpoint; none without one).
void print_samples(const TrainConfig& cfg, const Model* trained, const Tokenizer& tok,
                   const std::string& checkpoint) {
  std::unique_ptr<Model> loaded;
  if (!trained && cfg.train.samples > 0 && !checkpoint.empty()) {
    loaded = load_model(checkpoint);
    trained = loaded.get();
  }
  for (int s = 0; trained && s < cfg.train.samples; ++s) {
    SamplingParams sp;
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.seed = cfg.seed + s;
    const char* prompts[] = {"The ", "In the morning, ", "He said that ", "It was "};
    auto r = generate(*trained, tok, prompts[s % 4], cfg.train.sample_tokens, sp);
    std::printf("--- sample %d ---\n%s%s\n", s + 1, prompts[s % 4], r.text.c_str());
  }
  std::fflush(stdout);
}

}  // namespace

TrainResult train(TrainConfig cfg, bool resume, dist::Comm* comm_arg) {
  if (cfg.threads > 0) set_num_threads(cfg.threads);
  // The layout (dist/groups.h, Megatron's rank order): tp ranks hold shards of one model and
  // compute the same rows together; pp stages hold consecutive layers; dp ranks hold the same
  // part, draw the same global batch, compute their slice of it and sum their gradients before
  // the (identical) update. The StepRunner (step_runner.h) is the layout; rank 0 alone writes
  // the run directory.
  dist::SingleComm single;
  dist::Comm& comm = comm_arg ? *comm_arg : single;
  check_same_config(cfg, comm);
  check_layout(cfg, comm);
  dist::ProcessGroups groups = dist::make_groups(comm, cfg.parallel.tp, cfg.parallel.pp);
  const int dp = groups.plan.dp;
  const bool writer = comm.rank() == 0;
  KILN_CHECK(cfg.train.batch_size % dp == 0, "train", "train.batch_size = ", cfg.train.batch_size,
             " is not divisible by the ", dp, " data-parallel ranks; use a multiple of ", dp);
  if (!writer) set_log_level(LogLevel::warn);
  if (writer) {
    make_dirs(cfg.run_dir);
    write_file_atomic(cfg.run_dir + "/config.yaml", cfg.yaml);
  }

  std::optional<quant::GgufModel> gguf;  // a GGUF base, read once for its tokenizer and model
  if (!cfg.init_from.empty() && quant::is_gguf_path(cfg.init_from))
    gguf = quant::load_gguf_model(cfg.init_from, /*keep_quantized=*/false);
  const Tokenizer tok = load_training_tokenizer(cfg, gguf ? &*gguf : nullptr);
  std::optional<ChatTemplate> chat;  // SFT data's; kept with the checkpoints unless the default
  if (!cfg.data.sft.empty()) chat = sft_chat_template(cfg, tok);
  const std::string chat_source = chat && !chat->is_default() ? chat->source() : "";
  std::unique_ptr<Model> model = build_model(cfg, tok, gguf ? &*gguf : nullptr);
  const ModelConfig whole_cfg = model->config();
  std::unique_ptr<BatchSource> data = open_data(cfg, tok, chat ? &*chat : nullptr);
  const int B = cfg.train.batch_size, T = cfg.train.seq_len;
  const bool has_val = data->eval_batches_available(B) > 0;
  log_info("data: ", data->describe(), "; model: ", model->num_params(), " parameters");

  TrainerState state;
  const std::string metrics_path = cfg.run_dir + "/metrics.jsonl";
  std::unique_ptr<StepRunner> runner = start_runner(
      cfg, groups, std::move(model), resume ? resume_checkpoint(cfg) : "", *data, state, writer);
  if (!resume && writer) write_file_atomic(metrics_path, "");
  comm.barrier();  // nobody reads the run directory before rank 0 has set it up
  std::ofstream metrics;
  if (writer) metrics.open(metrics_path, std::ios::app);
  const int64_t state_bytes = runner->state_bytes();
  const int64_t tokens_per_step = int64_t(B) * T * cfg.train.grad_accum;
  const bool fp16 = cfg.train.precision == Precision::fp16;
  LossScaler scaler(cfg.loss_scale);
  if (resume && fp16 && state.loss_scale > 0)
    scaler.restore(state.loss_scale, state.scale_growth, state.scale_hysteresis);
  log_info("precision ", name_of(cfg.train.precision), ", recompute ", name_of(cfg.train.recompute),
           ", dp ", dp, " x tp ", cfg.parallel.tp, " x pp ", cfg.parallel.pp, runner->describe(),
           "; weights+grads+AdamW ", state_bytes >> 20, " MiB per rank (state_bytes ", state_bytes,
           "), activations ", runner->activation_bytes() >> 20, " MiB", runner->device_suffix());
  TrainResult result;
  Progress progress("train", cfg.train.steps, "steps");
  double last_loss = NAN, last_val = NAN;
  int consecutive_skips = 0;

  const int64_t first_step = state.step + 1;
  for (int64_t step = first_step; step <= cfg.train.steps; ++step) {
    auto t0 = std::chrono::steady_clock::now();
    const float lr = lr_at(int(step), cfg.train.steps, cfg.optim.lr, cfg.optim.min_lr,
                           cfg.optim.warmup_steps, cfg.optim.schedule);
    const StepRecord s = run_step(*runner, *data, scaler, cfg, step, lr, consecutive_skips);
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.step = step;
    state.tokens_seen += tokens_per_step;
    result.comm_bytes = runner->comm_bytes();
    if (step == first_step && comm.size() > 1)
      log_info("step ", step, " sent ", result.comm_bytes, " bytes on rank 0 (comm_bytes)");
    result.losses.push_back(s.loss);
    result.step_ms.push_back(dt * 1e3);
    nlohmann::json rec =
        metrics_record(step, s, lr, state.tokens_seen, tokens_per_step, dt, state_bytes,
                       result.comm_bytes, fp16 ? &scaler : nullptr, runner->moe_stats());
    const bool last = step == cfg.train.steps;
    if (has_val && cfg.train.eval_every > 0 && (step % cfg.train.eval_every == 0 || last)) {
      last_val = evaluate(*data, B, T, cfg.train.eval_batches, *runner);
      rec["val_loss"] = last_val;
      rec["val_perplexity"] = std::exp(last_val);
    }
    if (writer) metrics << rec.dump() << "\n" << std::flush;
    if (writer)
      progress.update(step, "loss " + fmt("%.4f", s.loss) +
                                (std::isnan(last_val) ? "" : " val " + fmt("%.4f", last_val)) +
                                " lr " + fmt("%.2e", lr) + " " +
                                fmt("%.0f", double(tokens_per_step) / dt) + " tok/s");
    if ((cfg.train.checkpoint_every > 0 && step % cfg.train.checkpoint_every == 0) ||
        (last && cfg.train.final_checkpoint)) {
      state.loader = data->state();
      state.loss_scale = fp16 ? scaler.scale() : 0;
      state.scale_growth = scaler.growth();
      state.scale_hysteresis = scaler.hysteresis_left();
      result.checkpoint =
          write_checkpoint(*runner, cfg, comm, groups.plan, whole_cfg, tok, state, chat_source);
    }
    last_loss = s.loss;
  }
  const Model* trained = runner->trained_model();
  result.activation_bytes = runner->activation_bytes();
  result.state_bytes = max_over_ranks(state_bytes, comm);
  result.comm_bytes = max_over_ranks(result.comm_bytes, comm);
  comm.barrier();  // the last checkpoint is complete before any rank returns
  if (!writer) return result;
  progress.finish("loss " + fmt("%.4f", last_loss));
  if (result.checkpoint.empty()) result.checkpoint = latest_checkpoint(cfg.run_dir);
  result.final_loss = last_loss;
  result.final_val_loss = last_val;
  result.steps = state.step;
  print_samples(cfg, trained, tok, result.checkpoint);
  return result;
}

}  // namespace kiln

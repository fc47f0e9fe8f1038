#include "kiln/train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "kiln/core/error.h"
#include "kiln/io/checksums.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/model_io.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

void fsync_dir(const std::string& path) {
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    fsync(fileno(f));
    std::fclose(f);
  }
}

}  // namespace

static void read_trainer_state(const std::string& dir, AdamW& opt, TrainerState& state);

namespace {

// Writes a checkpoint for `step` under a temporary name (fill writes its files there), adds the
// checksums, renames it into place and removes the oldest beyond `keep`.
template <class Fill>
std::string commit_checkpoint(const std::string& run_dir, int64_t step, int keep, Fill&& fill) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", (long long)step);
  const std::string parent = run_dir + "/checkpoints";
  const std::string final_dir = parent + "/" + name, tmp = final_dir + ".tmp";
  fs::remove_all(tmp);
  make_dirs(tmp);
  fill(tmp);
  write_checksums(tmp);
  fsync_dir(tmp);
  fs::remove_all(final_dir);  // re-saving a step after a resume
  fs::rename(tmp, final_dir);
  fsync_dir(parent);
  prune_checkpoints(run_dir, keep);
  return final_dir;
}

void save_moments(const std::string& path, const AdamW& opt, const Tensor* masters) {
  std::vector<std::pair<std::string, Tensor>> t = {{"exp_avg", const_cast<AdamW&>(opt).m()},
                                                   {"exp_avg_sq", const_cast<AdamW&>(opt).v()}};
  if (masters) t.emplace_back("master_weights", *masters);
  save_safetensors(path, t, {{"step", std::to_string(opt.steps())}});
}

// The moments of optimizer.safetensors into opt; `what` names what they belong to.
SafeTensorsFile load_moments(const std::string& dir, AdamW& opt, const char* what) {
  auto st = load_safetensors(dir + "/optimizer.safetensors");
  for (auto [name, dst] :
       {std::pair<const char*, Tensor*>{"exp_avg", &opt.m()}, {"exp_avg_sq", &opt.v()}}) {
    const Tensor& t = st.get(name);
    KILN_CHECK(t.numel() == dst->numel() && t.dtype() == DType::f32, "checkpoint", dir,
               "/optimizer.safetensors: '", name, "' has ", t.numel(), " elements, the ", what,
               " has ", dst->numel(), " parameters: the checkpoint belongs to another ", what);
    std::memcpy(dst->raw(), t.raw(), dst->nbytes());
  }
  return st;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const Model& model, const Tokenizer& tok,
                            const AdamW& opt, const TrainerState& state, int keep, DType dtype) {
  return commit_checkpoint(run_dir, state.step, keep, [&](const std::string& tmp) {
    save_model(model, tmp, dtype);
    tok.save(tmp + "/tokenizer.json");
    save_moments(tmp + "/optimizer.safetensors", opt,
                 dtype != DType::f32 ? &model.weights() : nullptr);
    write_trainer_state(tmp, opt.steps(), state);
  });
}

std::string save_lora_checkpoint(const std::string& run_dir, const LoraWeights& adapter,
                                 const Tokenizer& tok, const AdamW& opt, const TrainerState& state,
                                 int keep) {
  return commit_checkpoint(run_dir, state.step, keep, [&](const std::string& tmp) {
    save_lora_adapter(adapter.adapter(), tmp);
    tok.save(tmp + "/tokenizer.json");
    save_moments(tmp + "/optimizer.safetensors", opt, nullptr);
    write_trainer_state(tmp, opt.steps(), state);
  });
}

bool is_lora_checkpoint(const std::string& dir) {
  return file_exists(dir + "/adapter_config.json");
}

void load_lora_checkpoint(const std::string& dir, const Model& base, LoraWeights& adapter,
                          AdamW& opt, TrainerState& state) {
  KILN_CHECK(is_lora_checkpoint(dir), "checkpoint", dir,
             " holds a whole model, not a LoRA adapter: this run has method lora; resume it with "
             "the method it was started with");
  verify_checksums(dir, {"optimizer.safetensors", "trainer_state.json"});
  adapter.assign(load_lora_adapter(dir, base), dir);
  load_moments(dir, opt, "adapter");
  read_trainer_state(dir, opt, state);
}

void write_trainer_state(const std::string& dir, int64_t optimizer_steps,
                         const TrainerState& state) {
  nlohmann::json js;
  js["step"] = state.step;
  js["tokens_seen"] = state.tokens_seen;
  js["optimizer_steps"] = optimizer_steps;
  js["loader"] = state.loader;
  js["loss_scale"] = {{"scale", state.loss_scale},
                      {"growth", state.scale_growth},
                      {"hysteresis_left", state.scale_hysteresis}};
  write_json_file_atomic(dir + "/trainer_state.json", js);
}

void prune_checkpoints(const std::string& run_dir, int keep) {
  if (keep <= 0) return;
  auto all = checkpoint_dirs(run_dir);
  for (size_t i = 0; i + keep < all.size(); ++i) fs::remove_all(all[i]);
}

bool is_sharded_checkpoint(const std::string& dir) {
  return file_exists(dir + "/manifest.json");
}

void load_checkpoint(const std::string& dir, Model& model, AdamW& opt, TrainerState& state) {
  if (is_sharded_checkpoint(dir)) {
    verify_checksums(dir);  // every file, before any is read
    // The whole weights and moments reassembled from the shards' runs (model_io.h); throws naming
    // a missing or foreign shard file, and any part of the model no shard holds.
    load_sharded_buffers(dir, model,
                         {{"weights", "weight_runs", model.weights().f32()},
                          {"exp_avg", "moment_runs", opt.m().f32()},
                          {"exp_avg_sq", "moment_runs", opt.v().f32()}});
    read_trainer_state(dir, opt, state);
    return;
  }
  KILN_CHECK(!is_lora_checkpoint(dir), "checkpoint", dir,
             " holds a LoRA adapter, not a whole model: resume it with method: lora, or merge it "
             "(kiln merge) to start a full fine-tune from");
  verify_checksums(dir, {"optimizer.safetensors", "trainer_state.json"});
  load_weights(model, dir);  // checks the model's files
  const SafeTensorsFile st = load_moments(dir, opt, "model");
  if (st.contains("master_weights")) {  // bf16 checkpoint: the fp32 masters are here
    const Tensor& t = st.get("master_weights");
    KILN_CHECK(t.numel() == model.num_params() && t.dtype() == DType::f32, "checkpoint", dir,
               "/optimizer.safetensors: master_weights does not match the model");
    std::memcpy(model.weights().raw(), t.raw(), model.weights().nbytes());
  }
  read_trainer_state(dir, opt, state);
}

static void read_trainer_state(const std::string& dir, AdamW& opt, TrainerState& state) {
  auto js = read_json_file(dir + "/trainer_state.json");
  try {
    state.step = js.at("step").get<int64_t>();
    state.tokens_seen = js.at("tokens_seen").get<int64_t>();
    opt.set_steps(js.at("optimizer_steps").get<int64_t>());
    state.loader = js.at("loader");
    if (js.contains("loss_scale")) {
      state.loss_scale = js["loss_scale"].at("scale").get<double>();
      state.scale_growth = js["loss_scale"].at("growth").get<int>();
      state.scale_hysteresis = js["loss_scale"].at("hysteresis_left").get<int>();
    }
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint", dir, "/trainer_state.json is malformed (", e.what(),
         "); resume from an earlier checkpoint");
  }
}

}  // namespace kiln

#include "kiln/train/train_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <functional>
#include <map>

#include "kiln/core/error.h"
#include "kiln/io/file.h"

namespace kiln {

namespace {

// YAML -> JSON for the model section (HF config keys are JSON-typed).
nlohmann::json to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json j = nlohmann::json::object();
      for (auto it : n) j[it.first.as<std::string>()] = to_json(it.second);
      return j;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json j = nlohmann::json::array();
      for (auto it : n) j.push_back(to_json(it));
      return j;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (s == "null" || s == "~") return nullptr;
      try {
        size_t used;
        long long i = std::stoll(s, &used);
        if (used == s.size()) return i;
      } catch (...) {
      }
      try {
        size_t used;
        double d = std::stod(s, &used);
        if (used == s.size()) return d;
      } catch (...) {
      }
      return s;
    }
    default:
      return nullptr;
  }
}

// Sets root[a][b][c] = value for "a.b.c=value"; the value is parsed as YAML.
void apply_override(YAML::Node root, const std::string& kv) {
  auto eq = kv.find('=');
  KILN_CHECK(eq != std::string::npos && eq > 0, "config", "override '", kv,
             "' must look like section.key=value (e.g. optim.lr=1e-3)");
  std::string path = kv.substr(0, eq), value = kv.substr(eq + 1);
  std::vector<std::string> keys;
  for (size_t b = 0;;) {
    size_t e = path.find('.', b);
    keys.push_back(path.substr(b, e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    YAML::Node next = chain.back()[keys[i]];
    chain.push_back(next);
  }
  chain.back()[keys.back()] = YAML::Load(value);
}

template <typename T>
void read(const YAML::Node& sec, const std::string& section, const char* key, T& out,
          const std::string& src) {
  if (!sec[key]) return;
  try {
    out = sec[key].as<T>();
  } catch (const YAML::Exception&) {
    fail("config", src, ": '", section, ".", key, "' has an invalid value '", YAML::Dump(sec[key]),
         "'");
  }
}

void check_keys(const YAML::Node& sec, const std::string& section,
                const std::vector<std::string>& known, const std::string& src) {
  if (!sec) return;
  KILN_CHECK(sec.IsMap(), "config", src, ": '", section, "' must be a mapping");
  for (auto it : sec) {
    std::string k = it.first.as<std::string>();
    bool ok = false;
    for (const auto& kk : known) ok |= kk == k;
    if (!ok) {
      std::string list;
      for (const auto& kk : known) list += (list.empty() ? "" : ", ") + kk;
      fail("config", src, ": unknown key '", section.empty() ? k : section + "." + k,
           "'; known keys", section.empty() ? "" : " in " + section, ": ", list);
    }
  }
}

}  // namespace

Device device_from_name(const std::string& name, const std::string& source) {
  if (name == "cpu") return Device::cpu;
  if (name == "cuda") return Device::cuda;
  fail("config", source, source.empty() ? "" : ": ", "device is '", name, "'; use cpu or cuda");
}

LrSchedule lr_schedule_from_name(const std::string& name, const std::string& source) {
  if (name == "cosine") return LrSchedule::cosine;
  if (name == "linear") return LrSchedule::linear;
  if (name == "constant") return LrSchedule::constant;
  fail("config", source, source.empty() ? "" : ": ", "optim.schedule '", name,
       "' is unknown; use cosine, linear or constant");
}

const char* name_of(LrSchedule s) {
  return s == LrSchedule::linear ? "linear" : s == LrSchedule::constant ? "constant" : "cosine";
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(read_file(path));
  } catch (const YAML::Exception& e) {
    fail("config", path, ": not valid YAML at line ", e.mark.line + 1, ": ", e.msg);
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  KILN_CHECK(root.IsMap(), "config", path, ": the top level must be a mapping of sections");
  for (const auto& o : overrides) apply_override(root, o);

  TrainConfig c;
  check_keys(root, "",
             {"run_dir", "seed", "threads", "device", "model", "init_from", "data", "train",
              "optim", "loss_scale", "parallel"},
             path);
  read(root, "", "run_dir", c.run_dir, path);
  read(root, "", "seed", c.seed, path);
  read(root, "", "threads", c.threads, path);
  std::string device(device_name(c.device));
  read(root, "", "device", device, path);
  c.device = device_from_name(device, path);
  read(root, "", "init_from", c.init_from, path);
  KILN_CHECK(root["model"] || !c.init_from.empty(), "config", path,
             ": no 'model' section; give the model's Hugging Face config keys under model:, or "
             "init_from: a checkpoint directory");
  if (root["model"]) {
    nlohmann::json mj = to_json(root["model"]);
    c.vocab_from_tokenizer = !mj.contains("vocab_size");
    if (c.vocab_from_tokenizer) mj["vocab_size"] = 1;  // placeholder until the tokenizer loads
    c.model = ModelConfig::from_json(mj, path + " (model section)", true);
  }

  const YAML::Node data = root["data"];
  check_keys(data, "data", {"train", "val", "val_fraction", "tokenizer", "blend", "split", "mock"},
             path);
  if (data) {
    if (data["train"] && data["train"].IsSequence()) {
      c.data.train = data["train"].as<std::vector<std::string>>();
    } else if (data["train"]) {
      c.data.train = {data["train"].as<std::string>()};
    }
    read(data, "data", "val", c.data.val, path);
    read(data, "data", "val_fraction", c.data.val_fraction, path);
    read(data, "data", "tokenizer", c.data.tokenizer, path);
    if (data["blend"]) {
      KILN_CHECK(data["blend"].IsSequence(), "config", path,
                 ": data.blend must be a list like [0.7, data/a, 0.3, data/b]");
      for (auto item : data["blend"]) c.data.blend.push_back(item.Scalar());
    }
    read(data, "data", "split", c.data.split, path);
    read(data, "data", "mock", c.data.mock, path);
  }
  KILN_CHECK(!c.data.train.empty() || !c.data.blend.empty() || c.data.mock, "config", path,
             ": no training data: set data.train (text files), data.blend (indexed datasets) or ",
             "data.mock: true (random tokens)");
  KILN_CHECK(!c.data.mock || (c.data.train.empty() && c.data.blend.empty()), "config", path,
             ": data.mock replaces the training data; drop data.train and data.blend, or mock");
  KILN_CHECK(c.data.val_fraction >= 0 && c.data.val_fraction < 1, "config", path,
             ": data.val_fraction must be in [0, 1), got ", c.data.val_fraction);

  const YAML::Node tr = root["train"];
  check_keys(tr, "train",
             {"steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches",
              "checkpoint_every", "final_checkpoint", "keep_checkpoints", "log_every", "samples",
              "sample_tokens", "precision", "recompute", "recompute_layers", "max_skips",
              "inject_overflow_at", "checkpoint_dtype", "tf32"},
             path);
  if (tr) {
    read(tr, "train", "steps", c.train.steps, path);
    read(tr, "train", "batch_size", c.train.batch_size, path);
    read(tr, "train", "seq_len", c.train.seq_len, path);
    read(tr, "train", "grad_accum", c.train.grad_accum, path);
    read(tr, "train", "eval_every", c.train.eval_every, path);
    read(tr, "train", "eval_batches", c.train.eval_batches, path);
    read(tr, "train", "checkpoint_every", c.train.checkpoint_every, path);
    read(tr, "train", "final_checkpoint", c.train.final_checkpoint, path);
    read(tr, "train", "keep_checkpoints", c.train.keep_checkpoints, path);
    read(tr, "train", "log_every", c.train.log_every, path);
    read(tr, "train", "samples", c.train.samples, path);
    read(tr, "train", "sample_tokens", c.train.sample_tokens, path);
    std::string precision = "fp32", recompute = "none";
    read(tr, "train", "precision", precision, path);
    read(tr, "train", "recompute", recompute, path);
    read(tr, "train", "tf32", c.train.tf32, path);
    c.train.precision = precision_from_name(precision);
    c.train.recompute = recompute_from_name(recompute);
    read(tr, "train", "recompute_layers", c.train.recompute_layers, path);
    read(tr, "train", "max_skips", c.train.max_skips, path);
    read(tr, "train", "inject_overflow_at", c.train.inject_overflow_at, path);
    read(tr, "train", "checkpoint_dtype", c.train.checkpoint_dtype, path);
    KILN_CHECK(c.train.checkpoint_dtype == "fp32" || c.train.checkpoint_dtype == "bf16", "config",
               path, ": train.checkpoint_dtype '", c.train.checkpoint_dtype,
               "' is unknown; use fp32 or bf16");
  }
  if (c.train.recompute_layers != -1 && root["model"]) {
    KILN_CHECK(c.train.recompute_layers >= 0 && c.train.recompute_layers <= c.model.layers,
               "config", path, ": train.recompute_layers = ", c.train.recompute_layers,
               " but the model has ", c.model.layers, " layers; use 0..", c.model.layers,
               " or -1 for all");
  }
  KILN_CHECK(c.train.max_skips > 0, "config", path, ": train.max_skips must be positive");

  const YAML::Node ls = root["loss_scale"];
  check_keys(ls, "loss_scale", {"dynamic", "initial", "min", "growth_interval", "hysteresis"},
             path);
  if (ls) {
    read(ls, "loss_scale", "dynamic", c.loss_scale.dynamic, path);
    read(ls, "loss_scale", "initial", c.loss_scale.initial, path);
    read(ls, "loss_scale", "min", c.loss_scale.min_scale, path);
    read(ls, "loss_scale", "growth_interval", c.loss_scale.growth_interval, path);
    read(ls, "loss_scale", "hysteresis", c.loss_scale.hysteresis, path);
  }
  auto power_of_two = [](double x) {
    int e;
    return x > 0 && std::frexp(x, &e) == 0.5;
  };
  KILN_CHECK(power_of_two(c.loss_scale.initial) && power_of_two(c.loss_scale.min_scale), "config",
             path, ": loss_scale.initial and loss_scale.min must be powers of two (exact scaling)");
  KILN_CHECK(c.loss_scale.growth_interval > 0 && c.loss_scale.hysteresis > 0, "config", path,
             ": loss_scale.growth_interval and loss_scale.hysteresis must be positive");
  for (auto [v, k] : {std::pair{c.train.steps, "steps"},
                      {c.train.batch_size, "batch_size"},
                      {c.train.seq_len, "seq_len"},
                      {c.train.grad_accum, "grad_accum"}})
    KILN_CHECK(v > 0, "config", path, ": train.", k, " must be positive, got ", v);

  const YAML::Node op = root["optim"];
  check_keys(op, "optim",
             {"lr", "min_lr", "warmup_steps", "schedule", "beta1", "beta2", "eps", "weight_decay",
              "grad_clip"},
             path);
  if (op) {
    read(op, "optim", "lr", c.optim.lr, path);
    read(op, "optim", "min_lr", c.optim.min_lr, path);
    read(op, "optim", "warmup_steps", c.optim.warmup_steps, path);
    std::string schedule = name_of(c.optim.schedule);
    read(op, "optim", "schedule", schedule, path);
    c.optim.schedule = lr_schedule_from_name(schedule, path);
    read(op, "optim", "beta1", c.optim.beta1, path);
    read(op, "optim", "beta2", c.optim.beta2, path);
    read(op, "optim", "eps", c.optim.eps, path);
    read(op, "optim", "weight_decay", c.optim.weight_decay, path);
    read(op, "optim", "grad_clip", c.optim.grad_clip, path);
  }
  KILN_CHECK(c.optim.lr > 0, "config", path, ": optim.lr must be positive");

  const YAML::Node par = root["parallel"];
  check_keys(
      par, "parallel",
      {"tp", "pp", "zero", "sequence_parallel", "schedule", "bucket_mb", "timeout_s", "checkpoint"},
      path);
  if (par) {
    read(par, "parallel", "tp", c.parallel.tp, path);
    read(par, "parallel", "pp", c.parallel.pp, path);
    read(par, "parallel", "zero", c.parallel.zero, path);
    read(par, "parallel", "sequence_parallel", c.parallel.sequence_parallel, path);
    read(par, "parallel", "schedule", c.parallel.schedule, path);
    read(par, "parallel", "bucket_mb", c.parallel.bucket_mb, path);
    read(par, "parallel", "timeout_s", c.parallel.timeout_s, path);
    read(par, "parallel", "checkpoint", c.parallel.checkpoint, path);
  }
  KILN_CHECK(c.parallel.tp >= 1 && c.parallel.pp >= 1, "config", path,
             ": parallel.tp and parallel.pp must be at least 1");
  KILN_CHECK(c.parallel.zero >= 0 && c.parallel.zero <= 3, "config", path,
             ": parallel.zero = ", c.parallel.zero, " is not a ZeRO stage; use 0, 1, 2 or 3");
  KILN_CHECK(c.parallel.schedule == "1f1b" || c.parallel.schedule == "gpipe", "config", path,
             ": parallel.schedule '", c.parallel.schedule, "' is unknown; use 1f1b or gpipe");
  KILN_CHECK(c.parallel.checkpoint == "gathered" || c.parallel.checkpoint == "sharded", "config",
             path, ": parallel.checkpoint '", c.parallel.checkpoint,
             "' is unknown; use gathered or sharded");
  KILN_CHECK(c.parallel.bucket_mb > 0 && c.parallel.timeout_s > 0, "config", path,
             ": parallel.bucket_mb and parallel.timeout_s must be positive");
  KILN_CHECK(!c.parallel.sequence_parallel || c.parallel.tp > 1, "config", path,
             ": parallel.sequence_parallel needs parallel.tp > 1");
  KILN_CHECK(c.train.final_checkpoint || c.train.samples == 0 || c.parallel.pp == 1, "config", path,
             ": with parallel.pp > 1 the samples come from the final checkpoint; set ",
             "train.samples=0 or train.final_checkpoint=true");

  YAML::Emitter out;
  out << root;
  c.yaml = std::string(out.c_str()) + "\n";
  return c;
}

}  // namespace kiln

#include "kiln/train/train_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <functional>
#include <map>
#include <utility>

#include "kiln/core/error.h"
#include "kiln/io/config_section.h"
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

void read_data(const YAML::Node& node, const std::string& path, TrainConfig::Data& d) {
  ConfigSection data(node, "config", path, "data");
  const YAML::Node train = data.take("train");
  if (train && train.IsSequence()) {
    d.train = train.as<std::vector<std::string>>();
  } else if (train) {
    d.train = {train.as<std::string>()};
  }
  data.get("val", d.val);
  data.get("val_fraction", d.val_fraction);
  data.get("tokenizer", d.tokenizer);
  if (const YAML::Node blend = data.take("blend")) {
    KILN_CHECK(blend.IsSequence(), "config", path,
               ": data.blend must be a list like [0.7, data/a, 0.3, data/b]");
    for (auto item : blend) d.blend.push_back(item.Scalar());
  }
  data.get("split", d.split);
  data.get("mock", d.mock);
  if (const YAML::Node sft = data.take("sft")) {
    d.sft = sft.IsSequence() ? sft.as<std::vector<std::string>>()
                             : std::vector<std::string>{sft.as<std::string>()};
  }
  data.get("max_seq_length", d.max_seq_length);
  data.get("packing", d.packing);
  data.get("loss", d.loss);
  data.get("chat_template", d.chat_template);
  data.finish();
  KILN_CHECK(!d.train.empty() || !d.blend.empty() || d.mock || !d.sft.empty(), "config", path,
             ": no training data: set data.train (text files), data.blend (indexed datasets), ",
             "data.sft (chat records, JSONL) or data.mock: true (random tokens)");
  KILN_CHECK(!d.mock || (d.train.empty() && d.blend.empty() && d.sft.empty()), "config", path,
             ": data.mock replaces the training data; drop data.train, data.blend and data.sft, "
             "or mock");
  KILN_CHECK(d.sft.empty() || (d.train.empty() && d.blend.empty()), "config", path,
             ": data.sft (chat records) replaces data.train and data.blend; drop them, or sft");
  KILN_CHECK(!d.packing || !d.sft.empty(), "config", path,
             ": data.packing packs chat records (data.sft); text data fills every row already");
  KILN_CHECK(d.loss == "assistant" || d.loss == "all", "config", path, ": data.loss '", d.loss,
             "' is unknown; use assistant (replies and completions only) or all");
  KILN_CHECK(d.max_seq_length == 0 || d.max_seq_length >= 2, "config", path,
             ": data.max_seq_length must be at least 2 (or 0: train.seq_len + 1)");
  KILN_CHECK(d.val_fraction >= 0 && d.val_fraction < 1, "config", path,
             ": data.val_fraction must be in [0, 1), got ", d.val_fraction);
}

void read_train(const YAML::Node& node, const std::string& path, TrainConfig& c) {
  ConfigSection tr(node, "config", path, "train");
  tr.get("steps", c.train.steps);
  tr.get("batch_size", c.train.batch_size);
  tr.get("seq_len", c.train.seq_len);
  tr.get("grad_accum", c.train.grad_accum);
  tr.get("eval_every", c.train.eval_every);
  tr.get("eval_batches", c.train.eval_batches);
  tr.get("checkpoint_every", c.train.checkpoint_every);
  tr.get("final_checkpoint", c.train.final_checkpoint);
  tr.get("keep_checkpoints", c.train.keep_checkpoints);
  tr.get("log_every", c.train.log_every);
  tr.get("samples", c.train.samples);
  tr.get("sample_tokens", c.train.sample_tokens);
  std::string precision = "fp32", recompute = "none";
  tr.get("precision", precision);
  tr.get("recompute", recompute);
  tr.get("tf32", c.train.tf32);
  c.train.precision = precision_from_name(precision);
  c.train.recompute = recompute_from_name(recompute);
  tr.get("recompute_layers", c.train.recompute_layers);
  tr.get("max_skips", c.train.max_skips);
  tr.get("inject_overflow_at", c.train.inject_overflow_at);
  tr.get("checkpoint_dtype", c.train.checkpoint_dtype);
  tr.finish();
  KILN_CHECK(c.train.checkpoint_dtype == "fp32" || c.train.checkpoint_dtype == "bf16", "config",
             path, ": train.checkpoint_dtype '", c.train.checkpoint_dtype,
             "' is unknown; use fp32 or bf16");
  KILN_CHECK(c.train.max_skips > 0, "config", path, ": train.max_skips must be positive");
  for (auto [v, k] : {std::pair{c.train.steps, "steps"},
                      {c.train.batch_size, "batch_size"},
                      {c.train.seq_len, "seq_len"},
                      {c.train.grad_accum, "grad_accum"}})
    KILN_CHECK(v > 0, "config", path, ": train.", k, " must be positive, got ", v);
}

void read_loss_scale(const YAML::Node& node, const std::string& path, LossScaleConfig& ls) {
  ConfigSection sec(node, "config", path, "loss_scale");
  sec.get("dynamic", ls.dynamic);
  sec.get("initial", ls.initial);
  sec.get("min", ls.min_scale);
  sec.get("growth_interval", ls.growth_interval);
  sec.get("hysteresis", ls.hysteresis);
  sec.finish();
  auto power_of_two = [](double x) {
    int e;
    return x > 0 && std::frexp(x, &e) == 0.5;
  };
  KILN_CHECK(power_of_two(ls.initial) && power_of_two(ls.min_scale), "config", path,
             ": loss_scale.initial and loss_scale.min must be powers of two (exact scaling)");
  KILN_CHECK(ls.growth_interval > 0 && ls.hysteresis > 0, "config", path,
             ": loss_scale.growth_interval and loss_scale.hysteresis must be positive");
}

void read_optim(const YAML::Node& node, const std::string& path, TrainConfig::Optim& o) {
  ConfigSection op(node, "config", path, "optim");
  op.get("lr", o.lr);
  op.get("min_lr", o.min_lr);
  op.get("warmup_steps", o.warmup_steps);
  std::string schedule = name_of(o.schedule);
  op.get("schedule", schedule);
  o.schedule = lr_schedule_from_name(schedule, path);
  op.get("beta1", o.beta1);
  op.get("beta2", o.beta2);
  op.get("eps", o.eps);
  op.get("weight_decay", o.weight_decay);
  op.get("grad_clip", o.grad_clip);
  op.finish();
  KILN_CHECK(o.lr > 0, "config", path, ": optim.lr must be positive");
}

void read_lora(const YAML::Node& node, const std::string& path, LoraConfig& l) {
  ConfigSection lo(node, "config", path, "lora");
  lo.get("r", l.r);
  lo.get("alpha", l.alpha);
  lo.get("dropout", l.dropout);
  lo.get("rslora", l.rslora);
  if (YAML::Node t = lo.take("target_modules"); t && !t.IsNull()) {
    try {
      l.target_modules = t.IsSequence() ? t.as<std::vector<std::string>>()
                                        : std::vector<std::string>{t.as<std::string>()};
    } catch (const YAML::Exception&) {
      lo.bad_value("target_modules", "use a list of module names such as [q_proj, v_proj]");
    }
  }
  lo.finish();
  if (l.r < 1 || l.r > 4096) lo.bad_value("r", "use a rank in 1..4096 (8 to 64 is usual)");
  if (!(l.dropout >= 0 && l.dropout < 1)) lo.bad_value("dropout", "use a rate in [0, 1)");
  if (!std::isfinite(l.alpha)) lo.bad_value("alpha", "use a finite number");
}

void read_parallel(const YAML::Node& node, const std::string& path, TrainConfig& c) {
  ConfigSection par(node, "config", path, "parallel");
  auto& p = c.parallel;
  par.get("tp", p.tp);
  par.get("pp", p.pp);
  par.get("ep", p.ep);
  par.get("zero", p.zero);
  par.get("sequence_parallel", p.sequence_parallel);
  par.get("schedule", p.schedule);
  par.get("bucket_mb", p.bucket_mb);
  par.get("timeout_s", p.timeout_s);
  par.get("checkpoint", p.checkpoint);
  par.finish();
  KILN_CHECK(p.tp >= 1 && p.pp >= 1 && p.ep >= 1, "config", path,
             ": parallel.tp, parallel.pp and parallel.ep must be at least 1");
  KILN_CHECK(p.ep == 1 || p.checkpoint == "gathered", "config", path,
             ": parallel.ep > 1 writes gathered checkpoints; set parallel.checkpoint=gathered");
  KILN_CHECK(p.zero >= 0 && p.zero <= 3, "config", path, ": parallel.zero = ", p.zero,
             " is not a ZeRO stage; use 0, 1, 2 or 3");
  KILN_CHECK(p.schedule == "1f1b" || p.schedule == "gpipe", "config", path, ": parallel.schedule '",
             p.schedule, "' is unknown; use 1f1b or gpipe");
  KILN_CHECK(p.checkpoint == "gathered" || p.checkpoint == "sharded", "config", path,
             ": parallel.checkpoint '", p.checkpoint, "' is unknown; use gathered or sharded");
  KILN_CHECK(p.bucket_mb > 0 && p.timeout_s > 0, "config", path,
             ": parallel.bucket_mb and parallel.timeout_s must be positive");
  KILN_CHECK(!p.sequence_parallel || p.tp > 1, "config", path,
             ": parallel.sequence_parallel needs parallel.tp > 1");
  KILN_CHECK(c.train.final_checkpoint || c.train.samples == 0 || (p.pp == 1 && p.ep == 1),
             "config", path,
             ": with parallel.pp > 1 or parallel.ep > 1 the samples come from the final ",
             "checkpoint; set train.samples=0 or train.final_checkpoint=true");
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
  ConfigSection top(root, "config", path);
  top.get("run_dir", c.run_dir);
  top.get("seed", c.seed);
  top.get("threads", c.threads);
  std::string device(device_name(c.device));
  top.get("device", device);
  c.device = device_from_name(device, path);
  top.get("init_from", c.init_from);
  top.get("method", c.method);
  YAML::Node model = top.take("model");
  if (model && model.IsMap() &&
      std::as_const(model)["base"]) {  // model: {base: DIR}: the weights to start from
    KILN_CHECK(model.size() == 1 && c.init_from.empty(), "config", path,
               ": model.base takes the whole model from the base (its config.json); drop the "
               "other model keys and init_from");
    c.init_from = std::as_const(model)["base"].as<std::string>();
    model = YAML::Node(YAML::NodeType::Undefined);
  }
  KILN_CHECK(c.method == "full" || c.method == "lora" || c.method == "qlora", "config", path,
             ": method '", c.method, "' is unknown; use full, lora or qlora");
  const bool has_lora = top.has("lora");
  read_lora(top.take("lora"), path, c.lora);
  KILN_CHECK(!has_lora || c.trains_adapter(), "config", path, ": a lora section with method ",
             c.method, "; set method: lora (or qlora) or drop the section");
  KILN_CHECK(!c.trains_adapter() || !c.init_from.empty(), "config", path, ": method ", c.method,
             " adapts a trained model; name it as model: {base: DIR}");
  KILN_CHECK(model || !c.init_from.empty(), "config", path,
             ": no 'model' section; give the model's Hugging Face config keys under model:, or "
             "the model to start from as model: {base: DIR} (or init_from: DIR)");
  if (model) {
    nlohmann::json mj = to_json(model);
    c.vocab_from_tokenizer = !mj.contains("vocab_size");
    if (c.vocab_from_tokenizer) mj["vocab_size"] = 1;  // placeholder until the tokenizer loads
    c.model = ModelConfig::from_json(mj, path + " (model section)", true);
  }
  read_data(top.take("data"), path, c.data);
  read_train(top.take("train"), path, c);
  if (c.train.recompute_layers != -1 && model) {
    KILN_CHECK(c.train.recompute_layers >= 0 && c.train.recompute_layers <= c.model.layers,
               "config", path, ": train.recompute_layers = ", c.train.recompute_layers,
               " but the model has ", c.model.layers, " layers; use 0..", c.model.layers,
               " or -1 for all");
  }
  read_loss_scale(top.take("loss_scale"), path, c.loss_scale);
  read_optim(top.take("optim"), path, c.optim);
  read_parallel(top.take("parallel"), path, c);
  top.finish();

  YAML::Emitter out;
  out << root;
  c.yaml = std::string(out.c_str()) + "\n";
  return c;
}

}  // namespace kiln

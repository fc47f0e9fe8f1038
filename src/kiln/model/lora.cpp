#include "kiln/model/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/model_io.h"

namespace kiln {

namespace {

constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kWeights = "adapter_model.safetensors";

// "base_model.model.X.lora_A.weight" -> "X.weight"; "" when the name is not a LoRA tensor.
std::string base_weight_of(const std::string& name, const char* which) {
  const std::string suffix = std::string(".") + which + ".weight";
  const std::string prefix = kPrefix;
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  return name.substr(prefix.size(), name.size() - prefix.size() - suffix.size()) + ".weight";
}

std::string peft_name(const std::string& weight, const char* which) {
  return kPrefix + weight.substr(0, weight.size() - std::string(".weight").size()) + "." + which +
         ".weight";
}

// The (in, out) sizes of a base weight: Llama's (out, in) like nn.Linear, GPT-2's (in, out).
std::pair<int64_t, int64_t> in_out(const Model& base, const ParamInfo& p) {
  return base.config().arch == Arch::gpt2 ? std::pair{p.shape[0], p.shape[1]}
                                          : std::pair{p.shape[1], p.shape[0]};
}

LoraConfig read_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  LoraConfig c;
  try {
    const std::string type = j.value("peft_type", "LORA");
    KILN_CHECK(type == "LORA", "lora", path, ": peft_type is '", type,
               "'; only LORA adapters are supported");
    c.r = j.at("r").get<int>();
    c.alpha = j.value("lora_alpha", float(c.r));
    c.rslora = j.value("use_rslora", false);
    c.dropout = j.value("lora_dropout", 0.0f);
    c.base_model = j.value("base_model_name_or_path", std::string());
    if (j.contains("target_modules") && j["target_modules"].is_array())
      c.target_modules = j["target_modules"].get<std::vector<std::string>>();
    else if (j.contains("target_modules") && j["target_modules"].is_string())
      c.target_modules = {j["target_modules"].get<std::string>()};
    const std::string bias = j.value("bias", "none");
    KILN_CHECK(bias == "none", "lora", path, ": bias '", bias,
               "' adapters train biases too; only bias: none is supported");
  } catch (const nlohmann::json::exception& e) {
    fail("lora", path, ": a field has the wrong type or is missing (", e.what(), ")");
  }
  KILN_CHECK(c.r >= 1 && c.r <= 4096, "lora", path, ": r = ", c.r, " is out of range 1..4096");
  KILN_CHECK(std::isfinite(c.alpha), "lora", path, ": lora_alpha is not finite");
  return c;
}

// The projections an adapter can adapt: the base weight's name after "<layer prefix>", the fused
// GEMM it belongs to and its first output column there, given the model's sizes.
struct Projection {
  const char* name;
  LoraSite site;
  int col0, in, out;
};

std::vector<Projection> projections(const ModelConfig& c) {
  const int C = c.hidden, F = c.intermediate, HD = c.heads * c.head_dim,
            KD = c.kv_heads * c.head_dim;
  if (c.arch == Arch::gpt2)
    return {{"attn.c_attn", LoraSite::qkv, 0, C, 3 * HD},
            {"attn.c_proj", LoraSite::o, 0, HD, C},
            {"mlp.c_fc", LoraSite::up, 0, C, F},
            {"mlp.c_proj", LoraSite::down, 0, F, C}};
  return {{"self_attn.q_proj", LoraSite::qkv, 0, C, HD},
          {"self_attn.k_proj", LoraSite::qkv, HD, C, KD},
          {"self_attn.v_proj", LoraSite::qkv, HD + KD, C, KD},
          {"self_attn.o_proj", LoraSite::o, 0, HD, C},
          {"mlp.gate_proj", LoraSite::up, 0, C, F},
          {"mlp.up_proj", LoraSite::up, F, C, F},
          {"mlp.down_proj", LoraSite::down, 0, F, C}};
}

// PEFT's rule: a module is targeted when its name equals a target or ends with "." + target.
bool targeted(const std::string& module, const std::string& target) {
  if (module == target) return true;
  return module.size() > target.size() &&
         module.compare(module.size() - target.size(), target.size(), target) == 0 &&
         module[module.size() - target.size() - 1] == '.';
}

}  // namespace

LoraWeights::LoraWeights(const Model& base, LoraConfig cfg) : cfg_(std::move(cfg)) {
  const ModelConfig& mc = base.config();
  KILN_CHECK(cfg_.r >= 1 && cfg_.r <= 4096, "lora", "lora.r = ", cfg_.r,
             " is out of range; use 1..4096 (8 to 64 is usual)");
  KILN_CHECK(cfg_.dropout >= 0 && cfg_.dropout < 1, "lora", "lora.dropout = ", cfg_.dropout,
             " must be in [0, 1)");
  if (cfg_.target_modules.empty())
    cfg_.target_modules = mc.arch == Arch::gpt2 ? std::vector<std::string>{"c_attn"}
                                                : std::vector<std::string>{"q_proj", "v_proj"};
  const bool all = cfg_.target_modules.size() == 1 && cfg_.target_modules[0] == "all-linear";
  const std::string prefix = mc.arch == Arch::gpt2 ? "transformer.h." : "model.layers.";
  const int first = base.stage().first_layer;
  std::set<std::string> matched;
  int64_t offset = 0;
  slots_.resize(size_t(base.stage().num_layers));
  for (int l = 0; l < base.stage().num_layers; ++l) {
    for (const Projection& pr : projections(mc)) {
      const std::string module = prefix + std::to_string(first + l) + "." + pr.name;
      bool hit = all;
      for (const std::string& t : cfg_.target_modules)
        if (targeted(module, t)) {
          hit = true;
          matched.insert(t);
        }
      if (!hit) continue;
      LoraSlot s{pr.site, pr.col0, pr.in, pr.out, 0, 0, module + ".weight"};
      s.a = offset;
      params_.push_back({peft_name(s.weight, "lora_A"), {cfg_.r, pr.in}, offset, true});
      offset += int64_t(cfg_.r) * pr.in;
      s.b = offset;
      params_.push_back({peft_name(s.weight, "lora_B"), {pr.out, cfg_.r}, offset, true});
      offset += int64_t(pr.out) * cfg_.r;
      slots_[size_t(l)].push_back(std::move(s));
    }
  }
  std::string names;
  for (const Projection& pr : projections(mc)) {
    const std::string n = pr.name;
    names += (names.empty() ? "" : ", ") + n.substr(n.find('.') + 1);
  }
  for (const std::string& t : cfg_.target_modules)
    KILN_CHECK(all || matched.count(t), "lora", "lora.target_modules names '", t,
               "', which matches no linear layer of this ",
               mc.arch == Arch::gpt2 ? "GPT-2" : "Llama", " model; use some of ", names,
               " (or all-linear)");
  weights_ = Tensor::zeros({offset});
}

void LoraWeights::init(uint64_t seed) {
  Rng rng(seed);
  float* w = weights_.f32();
  for (const auto& layer : slots_)
    for (const LoraSlot& s : layer) {
      const float bound = 1.0f / std::sqrt(float(s.in));
      for (int64_t i = 0; i < int64_t(cfg_.r) * s.in; ++i)
        w[s.a + i] = (2.0f * rng.uniform() - 1.0f) * bound;
      std::fill(w + s.b, w + s.b + int64_t(s.out) * cfg_.r, 0.0f);
    }
}

void LoraWeights::assign(const LoraAdapter& ad, const std::string& source) {
  KILN_CHECK(ad.config.r == cfg_.r, "lora", source, ": the adapter has r = ", ad.config.r,
             ", this run lora.r = ", cfg_.r, "; use the adapter's rank");
  size_t n = 0;
  for (const auto& layer : slots_) n += layer.size();
  KILN_CHECK(ad.layers.size() == n, "lora", source, ": the adapter adapts ", ad.layers.size(),
             " weights, lora.target_modules here selects ", n, "; use the adapter's targets");
  size_t i = 0;
  for (const auto& layer : slots_)
    for (const LoraSlot& s : layer) {
      const LoraLayer& src = ad.layers[i++];
      KILN_CHECK(src.weight == s.weight, "lora", source, ": the adapter adapts ", src.weight,
                 " where this run adapts ", s.weight, "; use the adapter's target_modules");
      std::memcpy(weights_.f32() + s.a, src.a.raw(), src.a.nbytes());
      std::memcpy(weights_.f32() + s.b, src.b.raw(), src.b.nbytes());
    }
}

LoraAdapter LoraWeights::adapter() const {
  LoraAdapter ad;
  ad.config = cfg_;
  for (const auto& layer : slots_)
    for (const LoraSlot& s : layer) {
      LoraLayer l{s.weight, Tensor::empty({cfg_.r, s.in}), Tensor::empty({s.out, cfg_.r})};
      std::memcpy(l.a.raw(), weights_.f32() + s.a, l.a.nbytes());
      std::memcpy(l.b.raw(), weights_.f32() + s.b, l.b.nbytes());
      ad.layers.push_back(std::move(l));
    }
  return ad;
}

float LoraConfig::scaling() const {
  return rslora ? alpha / std::sqrt(float(r)) : alpha / float(r);
}

LoraAdapter load_lora_adapter(const std::string& path, const Model& base) {
  // A LoRA run directory (kiln finetune, method: lora) means its newest checkpoint.
  std::string dir = path;
  if (!file_exists(dir + "/adapter_config.json"))
    if (std::string latest = latest_checkpoint(dir); !latest.empty()) dir = latest;
  const std::string cfg_path = dir + "/adapter_config.json", st_path = dir + "/" + kWeights;
  KILN_CHECK(file_exists(cfg_path) && file_exists(st_path), "lora", "'", dir,
             "' is not a PEFT LoRA adapter: it needs adapter_config.json and ", kWeights);
  LoraAdapter ad;
  ad.config = read_config(cfg_path);
  const SafeTensorsFile st = load_safetensors(st_path);
  std::set<std::string> used;
  for (const ParamInfo& p : base.params()) {
    const std::string a_name = peft_name(p.name, "lora_A"), b_name = peft_name(p.name, "lora_B");
    if (!st.contains(a_name) && !st.contains(b_name)) continue;
    KILN_CHECK(st.contains(a_name) && st.contains(b_name), "lora", st_path, ": ",
               st.contains(a_name) ? b_name : a_name,
               " is missing (a LoRA layer needs both A and B)");
    KILN_CHECK(p.shape.size() == 2, "lora", st_path, ": ", p.name, " is not a matrix");
    const auto [in, out] = in_out(base, p);
    const Tensor& a = st.get(a_name);
    const Tensor& b = st.get(b_name);
    const int64_t r = ad.config.r;
    const bool fits = a.shape() == Shape{r, in} && b.shape() == Shape{out, r};
    KILN_CHECK(fits, "lora", st_path, ": ", p.name, " needs lora_A (", r, ", ", in,
               ") and lora_B (", out, ", ", r, ") for r = ", r, ", but the file has ",
               shape_str(a.shape()), " and ", shape_str(b.shape()),
               ": the adapter was made for another model or rank");
    ad.layers.push_back({p.name, a.to_f32(), b.to_f32()});
    used.insert(a_name);
    used.insert(b_name);
  }
  for (const std::string& name : st.names) {
    if (used.count(name)) continue;
    const std::string w = base_weight_of(name, "lora_A").empty() ? base_weight_of(name, "lora_B")
                                                                 : base_weight_of(name, "lora_A");
    fail("lora", st_path, ": tensor '", name, "' ",
         w.empty() ? "is not a LoRA A/B weight (only bias: none adapters are supported)"
                   : "adapts '" + w + "', which the base model does not have",
         ": the adapter was made for another model");
  }
  KILN_CHECK(!ad.layers.empty(), "lora", st_path, ": no LoRA tensors");
  return ad;
}

void save_lora_adapter(const LoraAdapter& ad, const std::string& dir) {
  make_dirs(dir);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const LoraLayer& l : ad.layers) {
    tensors.emplace_back(peft_name(l.weight, "lora_A"), l.a);
    tensors.emplace_back(peft_name(l.weight, "lora_B"), l.b);
  }
  save_safetensors(dir + "/" + kWeights, tensors, {{"format", "pt"}});
  const LoraConfig& c = ad.config;
  write_json_file_atomic(dir + "/adapter_config.json", {{"peft_type", "LORA"},
                                                        {"task_type", "CAUSAL_LM"},
                                                        {"r", c.r},
                                                        {"lora_alpha", c.alpha},
                                                        {"lora_dropout", c.dropout},
                                                        {"use_rslora", c.rslora},
                                                        {"bias", "none"},
                                                        {"target_modules", c.target_modules},
                                                        {"base_model_name_or_path", c.base_model}});
}

void merge_lora(Model& model, const LoraAdapter& ad) {
  const float s = ad.config.scaling();
  const bool conv1d = model.config().arch == Arch::gpt2;
  for (const LoraLayer& l : ad.layers) {
    const ParamInfo& p = model.param(l.weight);
    const auto [in, out] = in_out(model, p);
    const int64_t r = l.a.shape()[0];
    const bool fits = l.a.shape() == Shape{r, in} && l.b.shape() == Shape{out, r};
    KILN_CHECK(fits, "lora", "the adapter's ", l.weight, " does not fit this model");
    float* w = model.weights().f32() + p.offset;
    const float* A = l.a.f32();
    const float* B = l.b.f32();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double d = 0;
        for (int64_t k = 0; k < r; ++k) d += double(B[o * r + k]) * double(A[k * in + i]);
        (conv1d ? w[i * out + o] : w[o * in + i]) += float(s * d);
      }
  }
}

}  // namespace kiln

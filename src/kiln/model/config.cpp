#include "kiln/model/config.h"

#include <climits>
#include <set>
#include <type_traits>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/core/log.h"
#include "kiln/io/json_file.h"

namespace kiln {

using nlohmann::json;

namespace {

// Keys HF writes that kiln reads no meaning from (they may appear in any config.json).
const std::set<std::string> kIgnoredKeys = {"architectures",
                                            "model_type",
                                            "torch_dtype",
                                            "transformers_version",
                                            "hidden_act",
                                            "activation_function",
                                            "attention_bias",
                                            "attention_dropout",
                                            "mlp_bias",
                                            "pretraining_tp",
                                            "use_cache",
                                            "pad_token_id",
                                            "attn_pdrop",
                                            "embd_pdrop",
                                            "resid_pdrop",
                                            "summary_activation",
                                            "summary_first_dropout",
                                            "summary_proj_to_labels",
                                            "summary_type",
                                            "summary_use_proj",
                                            "scale_attn_weights",
                                            "reorder_and_upcast_attn",
                                            "scale_attn_by_inverse_layer_idx",
                                            "n_ctx",
                                            "task_specific_params",
                                            "_name_or_path",
                                            "dtype"};

template <typename T>
void take(const json& j, const char* key, T& out, std::set<std::string>& seen,
          const std::string& src) {
  if (!j.contains(key)) return;
  seen.insert(key);
  try {
    if constexpr (std::is_same_v<T, int>) {
      // get<int> would wrap a huge number into range silently (4294967297 -> 1).
      const json& v = j[key];
      KILN_CHECK(!v.is_number() || (v.get<double>() >= INT_MIN && v.get<double>() <= INT_MAX),
                 "config", src, ": key '", key, "' = ", v.dump(), " does not fit a 32-bit integer");
    }
    if (!j[key].is_null()) out = j[key].get<T>();
  } catch (const json::exception&) {
    fail("config", src, ": key '", key, "' has the wrong type (", j[key].dump(), ")");
  }
}

// The architecture, and whether it is Mixtral (a Llama with MoE MLPs).
std::pair<Arch, bool> detect_arch(const json& j, const std::string& src) {
  std::string type = j.value("model_type", "");
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty()) {
    std::string a = j["architectures"][0].get<std::string>();
    if (a == "LlamaForCausalLM") return {Arch::llama, false};
    if (a == "MixtralForCausalLM") return {Arch::llama, true};
    if (a == "GPT2LMHeadModel") return {Arch::gpt2, false};
    fail("config", src, ": architecture '", a,
         "' is not supported; kiln builds LlamaForCausalLM, MixtralForCausalLM and "
         "GPT2LMHeadModel");
  }
  if (type == "llama") return {Arch::llama, false};
  if (type == "mixtral") return {Arch::llama, true};
  if (type == "gpt2") return {Arch::gpt2, false};
  fail("config", src,
       ": cannot tell the architecture; set \"architectures\": [\"LlamaForCausalLM\"],",
       " [\"MixtralForCausalLM\"] or [\"GPT2LMHeadModel\"] (or \"model_type\": \"llama\" /",
       " \"mixtral\" / \"gpt2\")");
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src, bool strict) {
  KILN_CHECK(j.is_object(), "config", src, ": expected a JSON object of Hugging Face config keys");
  ModelConfig c;
  const auto [arch, mixtral] = detect_arch(j, src);
  c.arch = arch;
  std::set<std::string> seen;
  take(j, "vocab_size", c.vocab_size, seen, src);
  take(j, "bos_token_id", c.bos_token_id, seen, src);
  take(j, "eos_token_id", c.eos_token_id, seen, src);
  take(j, "initializer_range", c.initializer_range, seen, src);
  take(j, "tie_word_embeddings", c.tie_embeddings, seen, src);
  if (c.arch == Arch::llama) {
    take(j, "hidden_size", c.hidden, seen, src);
    take(j, "num_hidden_layers", c.layers, seen, src);
    take(j, "num_attention_heads", c.heads, seen, src);
    c.kv_heads = c.heads;
    take(j, "num_key_value_heads", c.kv_heads, seen, src);
    take(j, "intermediate_size", c.intermediate, seen, src);
    take(j, "max_position_embeddings", c.max_positions, seen, src);
    take(j, "rms_norm_eps", c.norm_eps, seen, src);
    take(j, "rope_theta", c.rope_theta, seen, src);
    if (c.heads > 0) c.head_dim = c.hidden / c.heads;
    take(j, "head_dim", c.head_dim, seen, src);
    if (j.contains("rope_scaling")) seen.insert("rope_scaling");  // null: no scaling
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      const json& rs = j["rope_scaling"];
      std::string type = rs.value("rope_type", rs.value("type", ""));
      using K = ops::RopeScaling::Kind;
      if (type == "linear")
        c.rope_scaling.kind = K::linear;
      else if (type == "dynamic")
        c.rope_scaling.kind = K::dynamic_ntk;
      else if (type == "llama3")
        c.rope_scaling.kind = K::llama3;
      else if (type == "default" || type.empty())
        c.rope_scaling.kind = K::none;
      else
        fail("config", src, ": rope_scaling type '", type,
             "' is not supported (linear, dynamic, llama3)");
      c.rope_scaling.factor = rs.value("factor", 1.0f);
      c.rope_scaling.low_freq_factor = rs.value("low_freq_factor", 1.0f);
      c.rope_scaling.high_freq_factor = rs.value("high_freq_factor", 4.0f);
      c.rope_scaling.original_max_position =
          rs.value("original_max_position_embeddings", c.max_positions);
    }
    if (!j.contains("tie_word_embeddings")) c.tie_embeddings = false;  // Llama's HF default
    if (mixtral) {
      c.moe.experts = 8;  // MixtralConfig's defaults
      c.moe.experts_per_tok = 2;
      take(j, "num_local_experts", c.moe.experts, seen, src);
      take(j, "num_experts_per_tok", c.moe.experts_per_tok, seen, src);
      take(j, "router_aux_loss_coef", c.moe.aux_loss_coef, seen, src);
      take(j, "output_router_logits", c.moe.output_router_logits, seen, src);
      take(j, "router_z_loss_coef", c.moe.z_loss_coef, seen, src);
      take(j, "moe_capacity_factor", c.moe.capacity_factor, seen, src);
      float jitter = 0;
      take(j, "router_jitter_noise", jitter, seen, src);
      KILN_CHECK(jitter == 0, "config", src, ": router_jitter_noise = ", jitter,
                 " is not supported (kiln routes deterministically); set it to 0");
      int window = 0;
      take(j, "sliding_window", window, seen, src);
      KILN_CHECK(window == 0 || window >= c.max_positions, "config", src,
                 ": sliding_window = ", window, " is shorter than max_position_embeddings (",
                 c.max_positions,
                 "); kiln's attention is not windowed: set sliding_window to null");
    }
  } else {
    take(j, "n_embd", c.hidden, seen, src);
    take(j, "n_layer", c.layers, seen, src);
    take(j, "n_head", c.heads, seen, src);
    c.kv_heads = c.heads;
    take(j, "n_positions", c.max_positions, seen, src);
    take(j, "layer_norm_epsilon", c.norm_eps, seen, src);
    c.intermediate = 4 * c.hidden;
    take(j, "n_inner", c.intermediate, seen, src);
    if (c.heads > 0) c.head_dim = c.hidden / c.heads;
    if (!j.contains("tie_word_embeddings")) c.tie_embeddings = true;  // GPT-2 always ties
    if (j.contains("activation_function")) {
      std::string act = j["activation_function"].get<std::string>();
      KILN_CHECK(act == "gelu_new" || act == "gelu_pytorch_tanh", "config", src,
                 ": activation_function '", act, "' is not supported; kiln's GPT-2 uses gelu_new");
    }
  }
  for (auto& [key, value] : j.items()) {
    if (seen.count(key) || kIgnoredKeys.count(key)) continue;
    if (strict) {
      fail(
          "config", src, ": unknown key '", key,
          "'; model keys are Hugging Face config.json names (e.g. hidden_size, num_hidden_layers)");
    }
    log_debug("config ", src, ": ignoring key '", key, "'");
  }
  if (c.arch == Arch::llama && j.contains("hidden_act")) {
    std::string act = j["hidden_act"].get<std::string>();
    KILN_CHECK(act == "silu", "config", src, ": hidden_act '", act,
               "' is not supported; Llama uses silu");
  }
  c.validate(src);
  return c;
}

void ModelConfig::validate(const std::string& src) const {
  // Positive and within core/limits.h, so num_params() and every buffer size fit int64.
  auto positive = [&](int v, const char* key, int64_t max) {
    KILN_CHECK(v > 0, "config", src, ": '", key, "' must be a positive integer, got ", v);
    limits::check_limit("config", src, key, v, max);
  };
  bool llama = arch == Arch::llama;
  positive(vocab_size, "vocab_size", limits::kMaxVocab);
  positive(hidden, llama ? "hidden_size" : "n_embd", limits::kMaxHidden);
  positive(layers, llama ? "num_hidden_layers" : "n_layer", limits::kMaxLayers);
  positive(heads, llama ? "num_attention_heads" : "n_head", limits::kMaxHeads);
  positive(kv_heads, "num_key_value_heads", limits::kMaxHeads);
  positive(intermediate, llama ? "intermediate_size" : "n_inner", limits::kMaxFfn);
  positive(max_positions, llama ? "max_position_embeddings" : "n_positions", limits::kMaxContext);
  limits::check_limit("config", src, "head_dim", head_dim, limits::kMaxHidden);
  KILN_CHECK(heads % kv_heads == 0, "config", src, ": num_attention_heads (", heads,
             ") must be a multiple of num_key_value_heads (", kv_heads, ")");
  KILN_CHECK(head_dim > 0 && head_dim % 2 == 0, "config", src, ": head dimension ", head_dim,
             " must be even (RoPE rotates pairs); choose hidden_size divisible by 2*heads");
  if (!llama) {
    KILN_CHECK(hidden % heads == 0, "config", src, ": n_embd (", hidden,
               ") must be divisible by n_head (", heads, ")");
  }
  KILN_CHECK(norm_eps > 0, "config", src, ": the norm epsilon must be positive");
  if (moe.enabled()) {
    KILN_CHECK(llama, "config", src,
               ": Mixture-of-Experts is built for the Llama family (Mixtral)");
    limits::check_limit("config", src, "num_local_experts", moe.experts, limits::kMaxExperts);
    KILN_CHECK(moe.experts_per_tok >= 1 && moe.experts_per_tok <= moe.experts, "config", src,
               ": num_experts_per_tok = ", moe.experts_per_tok, " must be between 1 and ",
               "num_local_experts (", moe.experts, "); lower num_experts_per_tok");
    KILN_CHECK(moe.aux_loss_coef >= 0 && moe.z_loss_coef >= 0, "config", src,
               ": router_aux_loss_coef and router_z_loss_coef must not be negative");
    KILN_CHECK(moe.capacity_factor == 0 || moe.capacity_factor > 0, "config", src,
               ": moe_capacity_factor = ", moe.capacity_factor,
               " must be positive (or 0 for dropless routing)");
  } else {
    KILN_CHECK(moe.experts == 0, "config", src, ": num_local_experts = ", moe.experts,
               " must be positive");
  }
}

int64_t ModelConfig::num_params() const {
  int64_t C = hidden, V = vocab_size, D = head_dim, F = intermediate;
  int64_t qkv = (int64_t(heads) + 2 * kv_heads) * D;
  int64_t per_layer;
  int64_t total;
  if (arch == Arch::llama) {
    const int64_t mlp = moe.enabled() ? moe.experts * 3 * F * C + moe.experts * C : 3 * F * C;
    per_layer = 2 * C + qkv * C + int64_t(heads) * D * C + mlp;
    total = V * C + C + (tie_embeddings ? 0 : V * C);
  } else {
    per_layer = 4 * C + (C * qkv + qkv) + (int64_t(heads) * D * C + C) + (C * F + F) + (F * C + C);
    total = V * C + int64_t(max_positions) * C + 2 * C;
  }
  return total + per_layer * layers;
}

int64_t ModelConfig::active_params() const {
  if (!moe.enabled()) return num_params();
  const int64_t idle = int64_t(moe.experts - moe.experts_per_tok) * 3 * intermediate * hidden;
  return num_params() - idle * layers;
}

json ModelConfig::to_json() const {
  json j;
  if (arch == Arch::llama && moe.enabled()) {
    j["architectures"] = {"MixtralForCausalLM"};
    j["model_type"] = "mixtral";
    j["num_local_experts"] = moe.experts;
    j["num_experts_per_tok"] = moe.experts_per_tok;
    j["router_aux_loss_coef"] = moe.aux_loss_coef;
    j["output_router_logits"] = moe.output_router_logits;
    j["router_jitter_noise"] = 0.0;
    j["sliding_window"] = nullptr;
    if (moe.z_loss_coef > 0) j["router_z_loss_coef"] = moe.z_loss_coef;
    if (moe.capacity_factor > 0) j["moe_capacity_factor"] = moe.capacity_factor;
  } else if (arch == Arch::llama) {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
  }
  if (arch == Arch::llama) {
    j["hidden_size"] = hidden;
    j["num_hidden_layers"] = layers;
    j["num_attention_heads"] = heads;
    j["num_key_value_heads"] = kv_heads;
    j["head_dim"] = head_dim;
    j["intermediate_size"] = intermediate;
    j["max_position_embeddings"] = max_positions;
    j["rms_norm_eps"] = norm_eps;
    j["rope_theta"] = rope_theta;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    using K = ops::RopeScaling::Kind;
    if (rope_scaling.kind != K::none) {
      json rs;
      rs["rope_type"] = rope_scaling.kind == K::linear        ? "linear"
                        : rope_scaling.kind == K::dynamic_ntk ? "dynamic"
                                                              : "llama3";
      rs["factor"] = rope_scaling.factor;
      if (rope_scaling.kind == K::llama3) {
        rs["low_freq_factor"] = rope_scaling.low_freq_factor;
        rs["high_freq_factor"] = rope_scaling.high_freq_factor;
        rs["original_max_position_embeddings"] = rope_scaling.original_max_position;
      }
      j["rope_scaling"] = rs;
    }
  } else {
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["n_embd"] = hidden;
    j["n_layer"] = layers;
    j["n_head"] = heads;
    j["n_positions"] = max_positions;
    j["n_inner"] = intermediate;
    j["layer_norm_epsilon"] = norm_eps;
    j["activation_function"] = "gelu_new";
  }
  j["vocab_size"] = vocab_size;
  j["tie_word_embeddings"] = tie_embeddings;
  j["initializer_range"] = initializer_range;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  j["torch_dtype"] = "float32";
  return j;
}

ModelConfig load_model_config(const std::string& path) {
  return ModelConfig::from_json(read_json_file(path), path, /*strict=*/false);
}

}  // namespace kiln

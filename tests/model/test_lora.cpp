// LoRA adapters in PEFT's format: saved and loaded tensor for tensor, merged as W + s B A
// (checked element by element against that formula in double precision, for nn.Linear and
// Conv1D layouts, alpha/r and rsLoRA's alpha/sqrt(r)), and every way an adapter can disagree with
// its base named.
#include "kiln/model/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::error_of;
using test::tiny;

Tensor randn(Shape s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = rng.normal();
  return t;
}

// An adapter on `weights` of `model` (shapes from its layout), random A and B.
LoraAdapter random_adapter(const Model& model, const std::vector<std::string>& weights, int r,
                           float alpha, bool rslora) {
  LoraAdapter ad;
  ad.config.r = r;
  ad.config.alpha = alpha;
  ad.config.rslora = rslora;
  ad.config.target_modules = {"q_proj", "v_proj"};
  uint64_t seed = 1;
  for (const std::string& w : weights) {
    const ParamInfo& p = model.param(w);
    const bool conv1d = model.config().arch == Arch::gpt2;
    const int64_t in = conv1d ? p.shape[0] : p.shape[1], out = conv1d ? p.shape[1] : p.shape[0];
    ad.layers.push_back({w, randn({r, in}, seed++), randn({out, r}, seed++)});
  }
  return ad;
}

void expect_merged(Arch arch, const std::vector<std::string>& weights, bool rslora) {
  test::TempDir dir;
  Model base(tiny(arch));
  base.init_weights(7);
  const int r = 4;
  save_lora_adapter(random_adapter(base, weights, r, 8.0f, rslora), dir.path() + "/lora");
  const LoraAdapter ad = load_lora_adapter(dir.path() + "/lora", base);
  ASSERT_EQ(ad.layers.size(), weights.size());
  const double s = rslora ? 8.0 / std::sqrt(4.0) : 8.0 / 4.0;
  EXPECT_NEAR(ad.config.scaling(), s, 1e-6);
  Model merged(tiny(arch));
  std::memcpy(merged.weights().raw(), base.weights().raw(), base.weights().nbytes());
  merge_lora(merged, ad);
  const bool conv1d = arch == Arch::gpt2;
  for (const ParamInfo& p : base.params()) {
    const float* w0 = base.weights().f32() + p.offset;
    const float* w1 = merged.weights().f32() + p.offset;
    const LoraLayer* l = nullptr;
    for (const LoraLayer& x : ad.layers)
      if (x.weight == p.name) l = &x;
    if (!l) {  // not adapted: untouched, bit for bit
      EXPECT_EQ(std::memcmp(w0, w1, size_t(p.numel()) * sizeof(float)), 0) << p.name;
      continue;
    }
    const int64_t in = l->a.shape()[1], out = l->b.shape()[0];
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i) {
        double d = 0;
        for (int k = 0; k < r; ++k) d += double(l->b.f32()[o * r + k]) * l->a.f32()[k * in + i];
        const int64_t at = conv1d ? i * out + o : o * in + i;
        ASSERT_NEAR(w1[at], w0[at] + s * d, 1e-5 * (1 + std::abs(s * d))) << p.name;
      }
  }
}

TEST(Lora, MergeIsWPlusScaledBA_Llama) {
  expect_merged(Arch::llama,
                {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"},
                false);
}

TEST(Lora, MergeIsWPlusScaledBA_Gpt2Conv1dAndRsLora) {
  expect_merged(Arch::gpt2,
                {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"}, true);
}

TEST(Lora, FilesArePeftsNamesAndConfig) {
  test::TempDir dir;
  Model base(tiny(Arch::llama));
  LoraAdapter ad = random_adapter(base, {"model.layers.0.self_attn.q_proj.weight"}, 2, 4, false);
  ad.config.base_model = "runs/base";
  save_lora_adapter(ad, dir.path());
  const SafeTensorsFile st = load_safetensors(dir.path() + "/adapter_model.safetensors");
  EXPECT_EQ(st.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape(),
            (Shape{2, 16}));
  EXPECT_EQ(st.get("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").shape(),
            (Shape{16, 2}));
  const nlohmann::json j = read_json_file(dir.path() + "/adapter_config.json");
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 2);
  EXPECT_EQ(j["lora_alpha"], 4);
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["use_rslora"], false);
  EXPECT_EQ(j["base_model_name_or_path"], "runs/base");
  EXPECT_EQ(j["target_modules"], nlohmann::json({"q_proj", "v_proj"}));
}

TEST(Lora, AdaptersThatDisagreeWithTheBaseAreNamed) {
  test::TempDir dir;
  Model base(tiny(Arch::llama));
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const std::string d = dir.path() + "/a";
  auto load = [&] { load_lora_adapter(d, base); };
  EXPECT_NE(error_of(load).find("is not a PEFT LoRA adapter"), std::string::npos);

  // Another model's shapes (a base with hidden 32).
  ModelConfig big = tiny(Arch::llama);
  big.hidden = 32;
  big.head_dim = 8;
  Model other(big);
  save_lora_adapter(random_adapter(other, {q}, 4, 8, false), d);
  std::string msg = error_of(load);
  EXPECT_NE(msg.find(q + " needs lora_A (4, 16) and lora_B (16, 4)"), std::string::npos) << msg;

  // A layer the base does not have.
  LoraAdapter ad = random_adapter(base, {q}, 4, 8, false);
  ad.layers[0].weight = "model.layers.9.self_attn.q_proj.weight";
  save_lora_adapter(ad, d);
  msg = error_of(load);
  EXPECT_NE(msg.find("adapts 'model.layers.9.self_attn.q_proj.weight', which the base model does "
                     "not have"),
            std::string::npos)
      << msg;

  // The rank in the config disagrees with the tensors.
  save_lora_adapter(random_adapter(base, {q}, 4, 8, false), d);
  nlohmann::json cfg = read_json_file(d + "/adapter_config.json");
  cfg["r"] = 8;
  write_json_file_atomic(d + "/adapter_config.json", cfg);
  EXPECT_NE(error_of(load).find("for r = 8"), std::string::npos);
  cfg["r"] = 4;
  cfg["bias"] = "all";
  write_json_file_atomic(d + "/adapter_config.json", cfg);
  EXPECT_NE(error_of(load).find("only bias: none"), std::string::npos);
  cfg["bias"] = "none";
  cfg["peft_type"] = "IA3";
  write_json_file_atomic(d + "/adapter_config.json", cfg);
  EXPECT_NE(error_of(load).find("peft_type is 'IA3'"), std::string::npos);
  cfg["peft_type"] = "LORA";
  cfg["r"] = "four";
  write_json_file_atomic(d + "/adapter_config.json", cfg);
  EXPECT_NE(error_of(load).find("wrong type"), std::string::npos);

  // Half a layer: A without B.
  save_safetensors(
      d + "/adapter_model.safetensors",
      {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", randn({4, 16}, 1)}});
  cfg["r"] = 4;
  write_json_file_atomic(d + "/adapter_config.json", cfg);
  EXPECT_NE(error_of(load).find("lora_B.weight is missing"), std::string::npos) << error_of(load);
}

}  // namespace
}  // namespace kiln

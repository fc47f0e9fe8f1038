// Checkpoint directories: a saved model reloads bit-identically, and every way a checkpoint can
// disagree with its config is an error naming the file, the tensor and the fix.
#include "kiln/model/model_io.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "model/model_test_util.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::error_of;
using test::tiny;

TEST(ModelIo, SaveLoadIsBitIdentical) {
  for (Arch arch : {Arch::llama, Arch::gpt2}) {
    test::TempDir dir;
    Model m(tiny(arch));
    m.init_weights(3);
    save_model(m, dir.path());
    auto back = load_model(dir.path());
    ASSERT_EQ(back->num_params(), m.num_params());
    EXPECT_EQ(std::memcmp(back->weights().raw(), m.weights().raw(), m.weights().nbytes()), 0);
    EXPECT_EQ(back->config().to_json(), m.config().to_json());
  }
}

TEST(ModelIo, ParameterCountMatchesConfigFormula) {
  for (Arch arch : {Arch::llama, Arch::gpt2}) {
    Model m(tiny(arch));
    EXPECT_EQ(m.num_params(), m.config().num_params());
  }
}

TEST(ModelIo, HuggingFaceNames) {
  Model m(tiny(Arch::llama));
  EXPECT_NO_THROW(m.param("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_EQ(m.param("model.layers.0.self_attn.k_proj.weight").shape, (Shape{8, 16}));
  Model g(tiny(Arch::gpt2));
  EXPECT_EQ(g.param("transformer.h.0.attn.c_attn.weight").shape, (Shape{16, 48}));
}

TEST(ModelIo, MissingDirectoryOrWeights) {
  test::TempDir dir;
  EXPECT_NE(error_of([&] { load_model(dir / "nope"); }).find("no config.json"), std::string::npos);
  Model m(tiny(Arch::llama));
  save_model(m, dir.path());
  std::remove((dir / "model.safetensors").c_str());
  EXPECT_NE(error_of([&] { load_model(dir.path()); }).find("no model.safetensors"),
            std::string::npos);
}

TEST(ModelIo, ConfigDisagreeingWithWeights) {
  test::TempDir dir;
  Model m(tiny(Arch::llama));
  save_model(m, dir.path());
  auto cfg = read_json_file(dir / "config.json");
  cfg["intermediate_size"] = 32;
  write_json_file_atomic(dir / "config.json", cfg);
  std::string e = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(e.find("mlp.gate_proj.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("disagree"), std::string::npos) << e;
  cfg["intermediate_size"] = 24;
  cfg["num_hidden_layers"] = 3;
  write_json_file_atomic(dir / "config.json", cfg);
  e = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(e.find("model.layers.2"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
}

TEST(ModelIo, TruncatedWeights) {
  test::TempDir dir;
  Model m(tiny(Arch::gpt2));
  save_model(m, dir.path());
  std::string path = dir / "model.safetensors";
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  std::string e = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST(ModelIo, BadConfigValues) {
  nlohmann::json j = tiny(Arch::llama).to_json();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j, "x", false); }).find("multiple"),
            std::string::npos);
  j = tiny(Arch::llama).to_json();
  j["hidden_sise"] = 3;
  EXPECT_NE(
      error_of([&] { ModelConfig::from_json(j, "x", true); }).find("unknown key 'hidden_sise'"),
      std::string::npos);
  EXPECT_NO_THROW(ModelConfig::from_json(j, "x", false));  // config.json may carry extra keys
  j = tiny(Arch::llama).to_json();
  j["rope_scaling"] = nullptr;  // HF writes null for "no scaling": a known key even when strict
  EXPECT_NO_THROW(ModelConfig::from_json(j, "x", true));
  j = tiny(Arch::llama).to_json();
  j["architectures"] = {"MistralForCausalLM"};
  EXPECT_NE(error_of([&] { ModelConfig::from_json(j, "x", false); }).find("not supported"),
            std::string::npos);
}

// Crafted files (issue 17). A shard's run [offset, length] whose sum wraps around int64 passed the
// bounds check and memcpy'd outside the weights; config values over core/limits.h (or over int)
// are rejected before a model is sized from them.
TEST(ModelIo, CraftedShardRunsAndConfigValues) {
  test::TempDir dir;
  const ModelConfig c = tiny(Arch::llama);
  Model m(c);
  write_json_file_atomic(dir / "config.json", c.to_json());
  write_json_file_atomic(dir / "manifest.json",
                         {{"params", m.num_params()}, {"files", {"shard0.safetensors"}}});
  Tensor w = Tensor::zeros({16}, DType::f32);
  auto shard_error = [&](const std::string& runs) {
    save_safetensors(dir / "shard0.safetensors", {{"weights", w}}, {{"weight_runs", runs}});
    return error_of([&] { load_weights(m, dir.path()); });
  };
  std::string e = shard_error("[[9223372036854775800, 16]]");  // + 16 wraps to negative
  EXPECT_NE(e.find("shard0.safetensors: weight_runs has a run of 16 parameters from "
                   "9223372036854775800"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find(std::to_string(m.num_params()) + " parameters"), std::string::npos) << e;
  e = shard_error("[[0, 9223372036854775807]]");
  EXPECT_NE(e.find("outside the model's"), std::string::npos) << e;
  e = shard_error("[[0, \"x\"]]");
  EXPECT_NE(e.find("weight_runs' is not a list of [offset, length] runs"), std::string::npos) << e;

  // A config.json within the limits that its small weights do not back fails on the shapes
  // before the model (here 2 x 2^40 floats) is allocated.
  test::TempDir small;
  save_model(m, small.path());
  nlohmann::json big = c.to_json();
  big["vocab_size"] = 1 << 24;
  big["hidden_size"] = 1 << 16;
  big["head_dim"] = 4;
  write_json_file_atomic(small / "config.json", big);
  e = error_of([&] { load_model(small.path()); });
  EXPECT_NE(e.find("tensor 'model.embed_tokens.weight' in " + (small / "model.safetensors") +
                   " has shape (50, 16) but config.json implies (16777216, 65536)"),
            std::string::npos)
      << e;

  nlohmann::json j = c.to_json();
  j["num_hidden_layers"] = 2147483000;
  e = error_of([&] { ModelConfig::from_json(j, "cfg.json", false); });
  EXPECT_NE(e.find("cfg.json: num_hidden_layers = 2147483000 is over kiln's limit of 1024"),
            std::string::npos)
      << e;
  j = c.to_json();
  j["vocab_size"] = 4294967297;  // get<int> would wrap this to 1
  e = error_of([&] { ModelConfig::from_json(j, "cfg.json", false); });
  EXPECT_NE(e.find("key 'vocab_size' = 4294967297 does not fit a 32-bit integer"),
            std::string::npos)
      << e;
  j = c.to_json();
  j["max_position_embeddings"] = 1 << 30;
  e = error_of([&] { ModelConfig::from_json(j, "cfg.json", false); });
  EXPECT_NE(e.find("max_position_embeddings = 1073741824 is over kiln's limit of 16777216"),
            std::string::npos)
      << e;
}

}  // namespace
}  // namespace kiln

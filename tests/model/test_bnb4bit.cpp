// bitsandbytes 4-bit checkpoints (model/bnb4bit.h, save_model_bnb4bit / load_model): the tensors
// bitsandbytes writes (names, dtypes, shapes, the quant state's JSON, config.json's
// quantization_config), weights loading as ops/nf4.h's dequantized values bit for bit, a file
// without double quantization (absmax in fp32) read as well, and damaged files named.
#include "kiln/model/bnb4bit.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/model_io.h"
#include "kiln/ops/nf4.h"
#include "model_test_util.h"
#include "test_util.h"

namespace kiln {
namespace {

ModelConfig llama() {
  ModelConfig c = test::tiny(Arch::llama);
  c.hidden = 64;
  c.head_dim = 16;
  c.intermediate = 96;
  return c;
}

TEST(Bnb4bit, RoundTripsAsTheDequantizedNf4Weights) {
  test::TempDir dir("bnb4bit");
  Model m(llama());
  m.init_weights(3);
  save_model_bnb4bit(m, dir / "m");
  const auto cfg = read_json_file(dir / "m/config.json");
  EXPECT_EQ(cfg["quantization_config"]["quant_method"], "bitsandbytes");
  EXPECT_EQ(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(cfg["quantization_config"]["bnb_4bit_use_double_quant"], true);
  const SafeTensorsFile f = load_safetensors(dir / "m/model.safetensors");
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  EXPECT_EQ(f.get(q).dtype(), DType::u8);
  EXPECT_EQ(f.get(q).shape(), (Shape{64 * 64 / 2, 1}));
  EXPECT_EQ(f.get(q + ".absmax").dtype(), DType::u8);
  EXPECT_EQ(f.get(q + ".absmax").numel(), 64 * 64 / 64);
  EXPECT_EQ(f.get(q + ".nested_absmax").numel(), 1);
  EXPECT_EQ(f.get(q + ".nested_quant_map").numel(), 256);
  EXPECT_EQ(f.get(q + ".quant_map").numel(), 16);
  const Tensor& st = f.get(q + ".quant_state.bitsandbytes__nf4");
  const auto state =
      nlohmann::json::parse(std::string(static_cast<const char*>(st.raw()), st.numel()));
  EXPECT_EQ(state["quant_type"], "nf4");
  EXPECT_EQ(state["blocksize"], 64);
  EXPECT_EQ(state["shape"], nlohmann::json({64, 64}));
  EXPECT_EQ(state["nested_blocksize"], 256);
  EXPECT_TRUE(state.contains("nested_offset"));
  EXPECT_EQ(f.get("model.embed_tokens.weight").dtype(), DType::f32);
  EXPECT_EQ(f.get("model.layers.0.input_layernorm.weight").dtype(), DType::f32);

  auto back = load_model(dir / "m");
  for (const ParamInfo& p : m.params()) {
    const float* w = m.weights().f32() + p.offset;
    std::vector<float> want(w, w + p.numel());
    if (bnb4bit_quantizes(p.name, p.shape))
      ops::nf4_dequantize(ops::nf4_quantize(w, p.numel()), 0, p.numel(), want.data());
    EXPECT_EQ(std::memcmp(back->weights().f32() + p.offset, want.data(), want.size() * 4), 0)
        << p.name;
  }
}

// A file as bitsandbytes writes it without double quantization: absmax in fp32 per block.
TEST(Bnb4bit, ReadsAbsmaxWithoutDoubleQuantization) {
  const Shape shape{2, 64};
  std::map<std::string, Tensor> t;
  Tensor codes = Tensor::empty({64, 1}, DType::u8);
  for (int i = 0; i < 64; ++i) codes.data<uint8_t>()[i] = uint8_t((i % 16) << 4 | (15 - i % 16));
  Tensor absmax = Tensor::empty({2});
  absmax.f32()[0] = 0.5f, absmax.f32()[1] = 2.0f;
  Tensor qmap = Tensor::empty({16});
  std::memcpy(qmap.raw(), ops::kNf4Levels, 64);
  const std::string js =
      R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 64]})";
  Tensor st = Tensor::empty({int64_t(js.size())}, DType::u8);
  std::memcpy(st.raw(), js.data(), js.size());
  const std::string w = "model.layers.0.mlp.down_proj.weight";
  t[w] = codes, t[w + ".absmax"] = absmax, t[w + ".quant_map"] = qmap;
  t[w + ".quant_state.bitsandbytes__nf4"] = st;
  ASSERT_TRUE(is_bnb4bit(t, w));
  std::vector<float> out(128);
  bnb4bit_dequantize(t, w, shape, "f.safetensors", out.data());
  EXPECT_EQ(out[0], ops::kNf4Levels[0] * 0.5f);
  EXPECT_EQ(out[1], ops::kNf4Levels[15] * 0.5f);
  EXPECT_EQ(out[64 + 2], ops::kNf4Levels[1] * 2.0f);
  EXPECT_TRUE(t.empty());  // every tensor of the weight was taken
}

TEST(Bnb4bit, DamagedFilesAreNamed) {
  Model m(llama());
  m.init_weights(3);
  const ParamInfo& p = m.param("model.layers.0.mlp.up_proj.weight");
  auto parts = bnb4bit_tensors(p.name, m.weights().f32() + p.offset, p.shape);
  std::map<std::string, Tensor> t(parts.begin(), parts.end());
  std::vector<float> out(p.numel());
  auto cut = t;
  cut[p.name + ".absmax"] = Tensor::empty({3}, DType::u8);
  std::string msg =
      test::error_of([&] { bnb4bit_dequantize(cut, p.name, p.shape, "f", out.data()); });
  EXPECT_NE(msg.find("'" + p.name + ".absmax' is U8 with 3 values"), std::string::npos) << msg;
  msg = test::error_of([&] { bnb4bit_dequantize(t, p.name, {96, 32}, "f", out.data()); });
  EXPECT_NE(msg.find("does not describe a"), std::string::npos) << msg;
  auto lost = t;
  lost.erase(p.name + ".quant_map");
  msg = test::error_of([&] { bnb4bit_dequantize(lost, p.name, p.shape, "f", out.data()); });
  EXPECT_NE(msg.find(".quant_map' is missing"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kiln

// llama-quantize's per-tensor choice (quant/quant_mix.h) against llama-quantize itself. The
// tables below are the types llama.cpp's llama-quantize (de3ff81, built by
// bench/build_llama_server.sh) wrote for kiln's f32 export of two Llama shapes, read off its log
// ("converting to ..."): A = hidden 256, ffn 512, 8 layers, 4 heads : 1 kv head (grouped 4:1),
// untied, so every row is a multiple of 256 and attn_v / ffn_down follow the use_more_bits
// layers; B = hidden 96, ffn 200, 2 layers, 3 heads : 1, tied, so every K type falls back to a
// 32-value one, ffn_down (rows of 200) to f16 and token_embd (the output) to q8_0.
// bench/kquant_vs_llama_quantize.sh compares whole files on more shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/io/gguf.h"
#include "kiln/model/transformer.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/quant/quant_mix.h"
#include "kiln/tokenizer/tokenizer.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

ModelConfig shape(char which) {
  ModelConfig c;
  const bool a = which == 'A';
  c.hidden = a ? 256 : 96;
  c.intermediate = a ? 512 : 200;
  c.layers = a ? 8 : 2;
  c.heads = a ? 4 : 3;
  c.kv_heads = 1;
  c.head_dim = c.hidden / c.heads;
  c.vocab_size = a ? 320 : 300;
  c.max_positions = 64;
  c.tie_embeddings = !a;
  return c;
}

// The GGUF tensors of a Llama model, named and shaped as llama.cpp names them (ggml dims), in
// the order kiln's exporter lists them.
std::vector<MixTensor> llama_tensors(const ModelConfig& c) {
  const int64_t C = c.hidden, F = c.intermediate, V = c.vocab_size;
  const int64_t q = int64_t(c.heads) * c.head_dim, kv = int64_t(c.kv_heads) * c.head_dim;
  std::vector<MixTensor> t = {{"token_embd.weight", {C, V}}};
  for (int l = 0; l < c.layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (MixTensor m : std::vector<MixTensor>{{"attn_norm.weight", {C}},
                                              {"attn_q.weight", {C, q}},
                                              {"attn_k.weight", {C, kv}},
                                              {"attn_v.weight", {C, kv}},
                                              {"attn_output.weight", {q, C}},
                                              {"ffn_norm.weight", {C}},
                                              {"ffn_gate.weight", {C, F}},
                                              {"ffn_up.weight", {C, F}},
                                              {"ffn_down.weight", {F, C}}}) {
      m.name = b + m.name;
      t.push_back(m);
    }
  }
  t.push_back({"output_norm.weight", {C}});
  if (!c.tie_embeddings) t.push_back({"output.weight", {C, V}});
  return t;
}

struct Expected {
  GgufType mix;
  const char* model;
  const char* outside;  // the quantized tensors outside the blocks, NAME=TYPE
  const char*
      layers;  // a line per layer: attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down
};

const Expected kLlamaQuantize[] = {
    {GgufType::q4_k_m, "A", "output.weight=Q6_K token_embd.weight=Q4_K",
     "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
     "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"},
    {GgufType::q2_k, "A", "output.weight=Q6_K token_embd.weight=Q2_K",
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"
     "Q2_K Q2_K Q4_K Q3_K Q2_K Q2_K Q3_K\n"},
    {GgufType::q3_k_m, "A", "output.weight=Q6_K token_embd.weight=Q3_K",
     "Q3_K Q3_K Q5_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q5_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"
     "Q3_K Q3_K Q4_K Q4_K Q3_K Q3_K Q4_K\n"},
    {GgufType::q4_k_s, "A", "output.weight=Q6_K token_embd.weight=Q4_K",
     "Q4_K Q4_K Q5_K Q4_K Q4_K Q4_K Q5_K\n"
     "Q4_K Q4_K Q5_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q5_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q5_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
     "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"},
    {GgufType::q5_k_m, "A", "output.weight=Q6_K token_embd.weight=Q5_K",
     "Q5_K Q5_K Q6_K Q5_K Q5_K Q5_K Q6_K\n"
     "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K\n"
     "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K\n"
     "Q5_K Q5_K Q6_K Q5_K Q5_K Q5_K Q6_K\n"
     "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K\n"
     "Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K Q5_K\n"
     "Q5_K Q5_K Q6_K Q5_K Q5_K Q5_K Q6_K\n"
     "Q5_K Q5_K Q6_K Q5_K Q5_K Q5_K Q6_K\n"},
    {GgufType::q6_k, "A", "output.weight=Q6_K token_embd.weight=Q6_K",
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"
     "Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K Q6_K\n"},
    {GgufType::q4_k_m, "B", "token_embd.weight=Q8_0",
     "Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 F16\n"
     "Q5_0 Q5_0 Q8_0 Q5_0 Q5_0 Q5_0 F16\n"},
    {GgufType::q2_k, "B", "token_embd.weight=Q8_0",
     "Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 F16\n"
     "Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 Q4_0 F16\n"},
    {GgufType::q3_k_m, "B", "token_embd.weight=Q8_0",
     "Q4_0 Q4_0 Q5_1 Q5_0 Q4_0 Q4_0 F16\n"
     "Q4_0 Q4_0 Q5_1 Q5_0 Q4_0 Q4_0 F16\n"},
    {GgufType::q4_k_s, "B", "token_embd.weight=Q8_0",
     "Q5_0 Q5_0 Q5_1 Q5_0 Q5_0 Q5_0 F16\n"
     "Q5_0 Q5_0 Q5_1 Q5_0 Q5_0 Q5_0 F16\n"},
    {GgufType::q5_k_m, "B", "token_embd.weight=Q8_0",
     "Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 Q5_1 F16\n"
     "Q5_1 Q5_1 Q8_0 Q5_1 Q5_1 Q5_1 F16\n"},
    {GgufType::q6_k, "B", "token_embd.weight=Q8_0",
     "Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 F16\n"
     "Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 Q8_0 F16\n"},
};

// kiln's choice in the tables' form.
std::pair<std::string, std::string> render(const std::vector<MixTensor>& t,
                                           const std::vector<gguf::TensorType>& types, int layers) {
  std::map<std::string, std::string> type_of;
  std::string outside;
  for (size_t i = 0; i < t.size(); ++i) {
    type_of[t[i].name] = gguf::tensor_type_name(types[i]);
    if (t[i].name.rfind("blk.", 0) != 0 && types[i] != gguf::TensorType::f32)
      outside += (outside.empty() ? "" : " ") + t[i].name + "=" + type_of[t[i].name];
  }
  std::string rows;
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"})
      rows += type_of.at(b + m + ".weight") + " ";
    rows += type_of.at(b + "ffn_down.weight") + "\n";
  }
  return {outside, rows};
}

TEST(QuantMix, TypesAreLlamaQuantizes) {
  for (const Expected& e : kLlamaQuantize) {
    const ModelConfig c = shape(e.model[0]);
    std::vector<MixTensor> t = llama_tensors(c);
    sort_like_llama_cpp(t);
    const auto types = llama_quantize_types(e.mix, {c.layers, c.heads, c.kv_heads}, t);
    ASSERT_EQ(types.size(), t.size());
    for (size_t i = 0; i < t.size(); ++i)  // norms stay f32
      if (t[i].dims.size() == 1) EXPECT_EQ(types[i], gguf::TensorType::f32) << t[i].name;
    const auto [outside, rows] = render(t, types, c.layers);
    EXPECT_EQ(outside, e.outside) << gguf_type_name(e.mix) << " on " << e.model;
    EXPECT_EQ(rows, e.layers) << gguf_type_name(e.mix) << " on " << e.model;
  }
}

// llama.cpp's loader order (weight_name_comparer): outside the blocks first, then block by block
// (numerically: blk.10 after blk.9), by name within each.
TEST(QuantMix, SortsLikeLlamaCpp) {
  ModelConfig c = shape('A');
  c.layers = 11;
  std::vector<MixTensor> t = llama_tensors(c);
  sort_like_llama_cpp(t);
  EXPECT_EQ(t[0].name, "output.weight");
  EXPECT_EQ(t[1].name, "output_norm.weight");
  EXPECT_EQ(t[2].name, "token_embd.weight");
  const char* const layer0[] = {"attn_k",   "attn_norm", "attn_output", "attn_q", "attn_v",
                                "ffn_down", "ffn_gate",  "ffn_norm",    "ffn_up"};
  for (int i = 0; i < 9; ++i)
    EXPECT_EQ(t[size_t(3 + i)].name, "blk.0." + std::string(layer0[i]) + ".weight");
  EXPECT_EQ(t[3 + 9 * 9].name, "blk.9.attn_k.weight");
  EXPECT_EQ(t[3 + 9 * 10].name, "blk.10.attn_k.weight");
}

// The attn_v of Llama 2 70B (80 layers, grouped-query) gets q5_k where q3_k / q4_k would be.
TEST(QuantMix, Llama70bAttnV) {
  ModelConfig c = shape('A');
  c.layers = 80;
  c.heads = 64;
  c.kv_heads = 8;
  c.head_dim = 4;
  std::vector<MixTensor> t = llama_tensors(c);
  sort_like_llama_cpp(t);
  const auto types = llama_quantize_types(GgufType::q4_k_s, {c.layers, c.heads, c.kv_heads}, t);
  for (size_t i = 0; i < t.size(); ++i)
    if (t[i].name.find("attn_v") != std::string::npos)
      EXPECT_EQ(types[i], gguf::TensorType::q5_k) << t[i].name;
}

TEST(QuantMix, Names) {
  EXPECT_EQ(gguf_type_from_name("Q4_K_M"), GgufType::q4_k_m);
  EXPECT_EQ(gguf_file_type(GgufType::q4_k_m), 15u);
  EXPECT_EQ(gguf_file_type(GgufType::q6_k), 18u);
  GgufType t;
  ASSERT_TRUE(gguf_type_from_file_type(12, &t));
  EXPECT_EQ(t, GgufType::q3_k_m);
  EXPECT_FALSE(gguf_type_from_file_type(19, &t));  // IQ2_XXS: not written by kiln
  try {
    gguf_type_from_name("q4_k");
    FAIL() << "q4_k alone is a block format, not a mix";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_k_m"), std::string::npos) << e.what();
  }
}

// export_gguf writes the mix: the types above, in llama.cpp's order, general.file_type last.
TEST(QuantMix, ExportWritesTheMix) {
  test::TempDir dir("kiln-quant-mix");
  for (char which : {'A', 'B'}) {
    const ModelConfig c = shape(which);
    Model model(c);
    model.init_weights(3);
    const Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
    const std::string path = dir / (std::string(1, which) + ".gguf");
    export_gguf(model, tok, path, GgufType::q4_k_m);
    const gguf::File f = gguf::File::open(path);
    std::vector<MixTensor> t = llama_tensors(c);
    sort_like_llama_cpp(t);
    const auto types = llama_quantize_types(GgufType::q4_k_m, {c.layers, c.heads, c.kv_heads}, t);
    ASSERT_EQ(f.tensors().size(), t.size());
    for (size_t i = 0; i < t.size(); ++i) {
      EXPECT_EQ(f.tensors()[i].name, t[i].name);
      EXPECT_EQ(f.tensors()[i].type, types[i]) << t[i].name;
    }
    const auto& keys = f.keys();
    ASSERT_GE(keys.size(), 2u);
    EXPECT_EQ(keys[keys.size() - 2], "general.quantization_version");
    EXPECT_EQ(keys.back(), "general.file_type");
    EXPECT_EQ(f.get_int("general.file_type"), 15);
    const GgufModel g = load_gguf_model(path);
    EXPECT_EQ(g.type, GgufType::q4_k_m);
    EXPECT_EQ(g.file_type, "q4_k_m");
  }
}

// A weight that is not finite is named instead of quantized into garbage.
TEST(QuantMix, NonFiniteWeightIsNamed) {
  test::TempDir dir("kiln-quant-mix-nan");
  Model model(shape('B'));
  model.init_weights(3);
  model.weights().f32()[model.param("model.layers.1.mlp.up_proj.weight").offset + 7] = NAN;
  const Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
  try {
    export_gguf(model, tok, dir / "nan.gguf", GgufType::q6_k);
    FAIL() << "exported a NaN weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'blk.1.ffn_up.weight' holds nan at row 0, column 7"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "nan.gguf"));
}

}  // namespace

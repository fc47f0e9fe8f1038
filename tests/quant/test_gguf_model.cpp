// Model <-> GGUF conversion without llama.cpp: layout details (names, ggml dims, the q/k
// permutation, f32 norms), `kiln quantize` directories, and bad input — metadata that disagrees
// with the tensors, unsupported architectures, existing outputs — with clear errors and no
// partial output. (llama.cpp itself is the oracle in test_gguf_llama_cpp.cpp.)
#include "kiln/quant/gguf_model.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/gguf.h"
#include "kiln/model/model_io.h"
#include "kiln/tokenizer/chat_template.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.vocab_size = 260;  // more rows than the tokenizer's 257: padded with unused tokens
  c.hidden = 64;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.intermediate = 96;
  c.max_positions = 64;
  c.initializer_range = 0.2f;
  return c;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected kiln::Error";
  return "";
}

// Copies a GGUF, replacing (or adding) one key, optionally dropping one tensor.
void rewrite(const std::string& src, const std::string& dst, const std::string& key, gguf::Value v,
             const std::string& drop = "") {
  gguf::File f = gguf::File::open(src);
  gguf::Writer w;
  for (const auto& k : f.keys()) w.set(k, f.get(k));
  if (!key.empty()) w.set(key, std::move(v));
  for (const auto& t : f.tensors())
    if (t.name != drop) w.add_tensor(t.name, t.dims, t.type, {t.data, t.data + t.nbytes()});
  w.write(dst);
}

class GgufModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model = std::make_unique<Model>(tiny());
    model->init_weights(7);
  }
  std::unique_ptr<Model> model;
  Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
  test::TempDir dir{"kiln-gguf-model"};
};

TEST_F(GgufModelTest, LayoutFollowsLlamaCpp) {
  const std::string path = dir / "m.gguf";
  export_gguf(*model, tok, path, GgufType::q4_0);
  gguf::File f = gguf::File::open(path);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("general.file_type"), 2);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").strings.size(), 260u);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").strings[256], "<|endoftext|>");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[256], 3);  // control
  EXPECT_EQ(f.get("tokenizer.ggml.token_type").ints[259], 5);  // unused padding
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").strings[32], "Ġ");  // byte-to-unicode spelling
  const auto& q = f.tensor("blk.1.attn_q.weight");
  EXPECT_EQ(q.dims, (std::vector<int64_t>{64, 64}));  // (in, out): ggml order
  EXPECT_EQ(q.type, gguf::TensorType::q4_0);
  EXPECT_EQ(f.tensor("blk.1.attn_k.weight").dims, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(f.tensor("blk.0.ffn_norm.weight").type, gguf::TensorType::f32);
  EXPECT_EQ(f.tensor("token_embd.weight").dims, (std::vector<int64_t>{64, 260}));
  EXPECT_TRUE(f.find_tensor("output.weight"));

  // q rows: GGUF row h*D + 2j + i holds HF row h*D + i*D/2 + j (convert_hf_to_gguf permute).
  export_gguf(*model, tok, dir / "f.gguf", GgufType::f32);
  gguf::File f32 = gguf::File::open(dir / "f.gguf");
  const float* hf =
      model->weights().f32() + model->param("model.layers.0.self_attn.k_proj.weight").offset;
  const float* gg = reinterpret_cast<const float*>(f32.tensor("blk.0.attn_k.weight").data);
  const int D = 16, C = 64;
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < D / 2; ++j)
        ASSERT_EQ(
            0, std::memcmp(gg + (h * D + 2 * j + i) * C, hf + (h * D + i * D / 2 + j) * C, C * 4));

  GgufModel g = load_gguf_model(path);
  EXPECT_EQ(g.type, GgufType::q4_0);
  EXPECT_EQ(g.qweights.size(), 2u * 7 + 2);  // 7 matrices per layer, embedding, lm_head
  EXPECT_EQ(g.model->config().vocab_size, 260);
  EXPECT_EQ(g.tokenizer.vocab_size(), 257);
}

TEST_F(GgufModelTest, QuantizeDirectory) {
  const std::string src = dir / "model", out = dir / "q8";
  save_model(*model, src);
  tok.save(src + "/tokenizer.json");
  quantize_model_dir(src, GgufType::q8_0, out);
  EXPECT_TRUE(file_exists(out + "/config.json"));
  EXPECT_TRUE(file_exists(out + "/tokenizer.json"));
  EXPECT_TRUE(is_gguf_path(out));
  EXPECT_TRUE(is_gguf_path(dir / "x.gguf"));
  EXPECT_FALSE(is_gguf_path(src));
  GgufModel g = load_gguf_model(out);
  EXPECT_EQ(g.type, GgufType::q8_0);
  EXPECT_EQ(g.qweights.at("lm_head.weight").type, QType::q8_0);
  // Existing output: refused, untouched.
  EXPECT_NE(error_of([&] { quantize_model_dir(src, GgufType::q4_0, out); }).find("already exists"),
            std::string::npos);
  // A broken source leaves nothing behind.
  std::filesystem::remove(src + "/model.safetensors");
  error_of([&] { quantize_model_dir(src, GgufType::q4_0, dir / "q4"); });
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_TRUE(e.path().filename() == "model" || e.path().filename() == "q8") << e.path();
}

// The model directory's chat template travels into the GGUF (tokenizer.chat_template, as
// llama.cpp's converter writes it) and into a quantized directory; kiln finds it in both.
TEST_F(GgufModelTest, ChatTemplateTravelsWithTheModel) {
  const std::string src = dir / "model", out = dir / "q8", file = dir / "t.gguf";
  save_model(*model, src);
  tok.save(src + "/tokenizer.json");
  const std::string tmpl =
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}";
  write_file_atomic(src + "/tokenizer_config.json",
                    nlohmann::json{{"chat_template", tmpl}, {"eos_token", "<|endoftext|>"}}.dump());
  export_gguf(*model, tok, file, GgufType::f32, chat_template_source(src));
  EXPECT_EQ(gguf::File::open(file).get_string("tokenizer.chat_template"), tmpl);
  const ChatTemplate from_gguf = find_chat_template(file, &tok);
  EXPECT_FALSE(from_gguf.is_default());
  EXPECT_EQ(from_gguf.render(std::vector<ChatMessage>{{"user", "hi"}}), "<user>hi<|endoftext|>");
  quantize_model_dir(src, GgufType::q8_0, out);
  EXPECT_EQ(gguf::File::open(out + "/model.gguf").get_string("tokenizer.chat_template"), tmpl);
  EXPECT_EQ(find_chat_template(out, &tok).render(std::vector<ChatMessage>{{"user", "hi"}}),
            "<user>hi<|endoftext|>");
  // Without a template: none written, and the guanaco default is used.
  export_gguf(*model, tok, dir / "plain.gguf", GgufType::f32);
  EXPECT_FALSE(gguf::File::open(dir / "plain.gguf").has("tokenizer.chat_template"));
  EXPECT_TRUE(find_chat_template(dir / "plain.gguf", &tok).is_default());
}

TEST_F(GgufModelTest, MetadataDisagreeingWithTensors) {
  const std::string good = dir / "good.gguf", bad = dir / "bad.gguf";
  export_gguf(*model, tok, good, GgufType::q8_0);
  auto load_error = [&](const std::string& key, gguf::Value v, const std::string& drop = "") {
    rewrite(good, bad, key, std::move(v), drop);
    return error_of([&] { load_gguf_model(bad); });
  };
  std::string e = load_error("llama.embedding_length", gguf::Value::u32(128));
  EXPECT_NE(e.find("embedding_length is 128"), std::string::npos) << e;
  e = load_error("llama.block_count", gguf::Value::u32(1));
  EXPECT_NE(e.find("'blk.1."), std::string::npos) << e;
  EXPECT_NE(e.find("disagrees"), std::string::npos) << e;
  e = load_error("llama.block_count", gguf::Value::u32(3));
  EXPECT_NE(e.find("no tensor 'blk.2."), std::string::npos) << e;
  e = load_error("llama.feed_forward_length", gguf::Value::u32(128));
  EXPECT_NE(e.find("blk.0.ffn_gate.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("disagrees"), std::string::npos) << e;
  e = load_error("llama.vocab_size", gguf::Value::u32(300));
  EXPECT_NE(e.find("vocab_size is 300"), std::string::npos) << e;
  e = load_error("general.architecture", gguf::Value::str("qwen2"));
  EXPECT_NE(e.find("'qwen2'"), std::string::npos) << e;
  e = load_error("", {}, "blk.0.attn_v.weight");
  EXPECT_NE(e.find("no tensor 'blk.0.attn_v.weight'"), std::string::npos) << e;
  e = load_error("llama.attention.layer_norm_rms_epsilon", gguf::Value::str("x"));
  EXPECT_NE(e.find("expected a float"), std::string::npos) << e;
  std::vector<std::string> few(100, "a");
  e = load_error("tokenizer.ggml.tokens", gguf::Value::str_array(few));
  EXPECT_NE(e.find("token_type has 260 entries but there are 100 tokens"), std::string::npos) << e;
}

// Crafted metadata (issue 17): dimensions over core/limits.h are named with the limit, and a
// config within the limits that the tensors do not back is caught by comparing the declared
// shapes before the model is allocated: block_count 1000 x feed_forward_length 262144 would be a
// ~200 GB model for a file of a few hundred KB.
TEST_F(GgufModelTest, CraftedDimensionsFailBeforeAllocating) {
  const std::string good = dir / "good.gguf", bad = dir / "bad.gguf";
  export_gguf(*model, tok, good, GgufType::q8_0);
  rewrite(good, bad, "llama.block_count", gguf::Value::u32(2147483000));
  std::string e = error_of([&] { load_gguf_model(bad); });
  EXPECT_NE(e.find(bad), std::string::npos) << e;
  EXPECT_NE(e.find("llama.block_count = 2147483000 is over kiln's limit of 1024"),
            std::string::npos)
      << e;
  rewrite(good, bad, "llama.feed_forward_length", gguf::Value::u32(2147483000));
  e = error_of([&] { load_gguf_model(bad); });
  EXPECT_NE(e.find("llama.feed_forward_length = 2147483000 is over kiln's limit of 262144"),
            std::string::npos)
      << e;
  rewrite(good, bad, "llama.feed_forward_length", gguf::Value::u32(262144));
  rewrite(bad, dir / "bad2.gguf", "llama.block_count", gguf::Value::u32(1000));
  e = error_of([&] { load_gguf_model(dir / "bad2.gguf"); });
  EXPECT_NE(e.find("tensor 'blk.0.ffn_gate.weight' has shape [64, 96]"), std::string::npos) << e;
  EXPECT_NE(e.find("implies [64, 262144]"), std::string::npos) << e;
  rewrite(good, bad, "tokenizer.ggml.eos_token_id", gguf::Value::u32(4000000000u));
  e = error_of([&] { load_gguf_model(bad); });
  EXPECT_NE(e.find("tokenizer.ggml.eos_token_id = 4000000000 is over kiln's limit of 16777215"),
            std::string::npos)
      << e;
}

TEST_F(GgufModelTest, UnsupportedModelsLeaveNoFile) {
  ModelConfig c = tiny();
  c.arch = Arch::gpt2;
  c.kv_heads = c.heads;
  Model gpt2(c);
  const std::string path = dir / "g.gguf";
  EXPECT_NE(error_of([&] { export_gguf(gpt2, tok, path, GgufType::f32); }).find("Llama"),
            std::string::npos);
  EXPECT_FALSE(file_exists(path));
  ModelConfig small = tiny();
  small.vocab_size = 100;  // fewer rows than the tokenizer has tokens
  Model m(small);
  EXPECT_NE(error_of([&] { export_gguf(m, tok, path, GgufType::f32); }).find("different models"),
            std::string::npos);
  EXPECT_FALSE(file_exists(path));
  EXPECT_NE(error_of([&] { gguf_type_from_name("q5_k"); }).find("q8_0"), std::string::npos);
}

}  // namespace

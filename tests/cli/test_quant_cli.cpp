// `kiln export --type q4_k_m` and `kiln quantize --type q4_k_m` as a user runs them: each tensor
// gets the type llama-quantize gives it (the expected types are llama-quantize's own, as in
// tests/quant/test_quant_mix.cpp), for a model whose rows are multiples of 256 and one whose rows
// are not (the fallbacks); both commands write the same bytes; `kiln generate` runs on every
// K-quant mix; a wrong --type is named with the choices; `--model-config` exports the random
// weights the same seed gives a saved model, byte for byte.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "kiln/io/file.h"
#include "kiln/io/gguf.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"
#include "train_test_util.h"

namespace kiln {
namespace {

// A: hidden 256, ffn 512, 8 layers, 4 heads : 1 kv head, untied. B: hidden 96, ffn 200,
// 2 layers, 3 heads : 1, tied. The vocabulary is the byte tokenizer's (the types do not depend
// on it: test_quant_mix.cpp's models have 320 and 300 rows).
ModelConfig shape(char which) {
  ModelConfig c;
  const bool a = which == 'A';
  c.hidden = a ? 256 : 96;
  c.intermediate = a ? 512 : 200;
  c.layers = a ? 8 : 2;
  c.heads = a ? 4 : 3;
  c.kv_heads = 1;
  c.head_dim = c.hidden / c.heads;
  c.vocab_size = 257;
  c.max_positions = 64;
  c.tie_embeddings = !a;
  return c;
}

// llama-quantize Q4_K_M's types (from its log), the tensors outside the blocks and then per layer
// attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down.
const std::map<char, std::pair<std::string, std::string>> kQ4KM = {
    {'A',
     {"output.weight=Q6_K token_embd.weight=Q4_K",
      "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
      "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
      "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
      "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
      "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
      "Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K Q4_K\n"
      "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"
      "Q4_K Q4_K Q6_K Q4_K Q4_K Q4_K Q6_K\n"}},
    {'B',
     {"token_embd.weight=Q8_0",
      "Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 Q5_0 F16\n"
      "Q5_0 Q5_0 Q8_0 Q5_0 Q5_0 Q5_0 F16\n"}},
};

class QuantCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("quant-cli");
    for (char which : {'A', 'B'}) {
      Model m(shape(which));
      m.init_weights(5);
      const std::string d = model(which);
      save_model(m, d);
      Tokenizer::byte_level({"<|endoftext|>"}).save(d + "/tokenizer.json");
    }
  }
  static void TearDownTestSuite() { delete dir_; }
  static test::CommandResult kiln(const std::string& args) {
    return test::run_command(test::kiln_binary() + " " + args);
  }
  static std::string model(char which) { return *dir_ / std::string(1, which); }
  static test::TempDir* dir_;
};
test::TempDir* QuantCli::dir_ = nullptr;

// The file's types in the table's form.
std::pair<std::string, std::string> types_of(const std::string& path, int layers) {
  const gguf::File f = gguf::File::open(path);
  std::string outside, rows;
  for (const auto& t : f.tensors())
    if (t.name.rfind("blk.", 0) != 0 && t.dims.size() == 2)
      outside += (outside.empty() ? "" : " ") + t.name + "=" + gguf::tensor_type_name(t.type);
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* m : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"})
      rows += std::string(gguf::tensor_type_name(f.tensor(b + m + ".weight").type)) + " ";
    rows += std::string(gguf::tensor_type_name(f.tensor(b + "ffn_down.weight").type)) + "\n";
  }
  return {outside, rows};
}

TEST_F(QuantCli, Q4KMTypesAreLlamaQuantizes) {
  for (char which : {'A', 'B'}) {
    const std::string file = *dir_ / (std::string(1, which) + "-q4_k_m.gguf");
    auto x =
        kiln("export --model " + model(which) + " --format gguf --type q4_k_m --output " + file);
    ASSERT_EQ(x.status, 0) << x.output;
    EXPECT_EQ(types_of(file, shape(which).layers), kQ4KM.at(which)) << which;
    const std::string out = *dir_ / (std::string(1, which) + "-q4_k_m");
    auto q = kiln("quantize --model " + model(which) + " --type Q4_K_M --output " + out);
    ASSERT_EQ(q.status, 0) << q.output;
    EXPECT_EQ(read_file(out + "/model.gguf"), read_file(file)) << which;
    auto g = kiln("generate --model " + out + " --prompt 'ab' --max-new-tokens 6 --temperature 0");
    ASSERT_EQ(g.status, 0) << g.output;
    EXPECT_EQ(g.output.rfind("ab", 0), 0u) << g.output;
  }
}

// The engine runs on every mix (every K-quant block format, and the fallbacks on B).
TEST_F(QuantCli, GenerateRunsOnEveryMix) {
  for (char which : {'A', 'B'})
    for (const char* t : {"q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q5_k_s", "q5_k_m",
                          "q6_k", "q4_0", "q8_0"}) {
      const std::string file = *dir_ / (std::string(1, which) + "-" + t + ".gguf");
      auto x = kiln("export --model " + model(which) + " --format gguf --type " + t + " --output " +
                    file);
      ASSERT_EQ(x.status, 0) << x.output;
      auto g =
          kiln("generate --model " + file + " --prompt 'ab' --max-new-tokens 4 --temperature 0");
      ASSERT_EQ(g.status, 0) << t << " on " << which << ": " << g.output;
      EXPECT_EQ(g.output.rfind("ab", 0), 0u) << g.output;
    }
}

// Benchmarks export models of any size without training: the file is the one the saved model
// with the same config and seed gives; a different seed gives different weights.
TEST_F(QuantCli, ModelConfigExportsTheSeedsRandomWeights) {
  const std::string config = model('A') + "/config.json";
  const std::string a = *dir_ / "cfg5.gguf", b = *dir_ / "dir5.gguf", c = *dir_ / "cfg6.gguf";
  ASSERT_EQ(kiln("export --model-config " + config + " --seed 5 --type q8_0 --output " + a).status,
            0);
  ASSERT_EQ(kiln("export --model " + model('A') + " --type q8_0 --output " + b).status, 0);
  ASSERT_EQ(kiln("export --model-config " + config + " --seed 6 --type q8_0 --output " + c).status,
            0);
  EXPECT_EQ(read_file(a), read_file(b));
  EXPECT_NE(read_file(a), read_file(c));
  auto both = kiln("export --model " + model('A') + " --model-config " + config +
                   " --type q8_0 --output " + (*dir_ / "x.gguf"));
  EXPECT_NE(both.status, 0);
  auto none = kiln("export --type q8_0 --output " + (*dir_ / "x.gguf"));
  EXPECT_NE(none.status, 0);
  EXPECT_NE(none.output.find("--model-config"), std::string::npos) << none.output;
}

// --type nf4: bitsandbytes' 4-bit checkpoint (model/bnb4bit.h); every command loads it as the
// model whose projections are NF4's dequantized values, so its greedy text is that model's.
TEST_F(QuantCli, Nf4WritesABitsandbytesCheckpointThatGenerates) {
  const std::string out = *dir_ / "A-nf4";
  auto q = kiln("quantize --model " + model('A') + " --type nf4 --output " + out);
  ASSERT_EQ(q.status, 0) << q.output;
  EXPECT_TRUE(file_exists(out + "/tokenizer.json"));
  auto loaded = load_model(out);
  auto original = load_model(model('A'));
  const std::string deq = *dir_ / "A-nf4-dequantized";
  save_model(*loaded, deq);
  Tokenizer::byte_level({"<|endoftext|>"}).save(deq + "/tokenizer.json");
  const std::string gen = " --prompt 'the ' --max-new-tokens 12 --temperature 0";
  auto a = kiln("generate --model " + out + gen), b = kiln("generate --model " + deq + gen);
  ASSERT_EQ(a.status, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  // 4.13 bits per projection weight on disk against 32.
  const double ratio = double(std::filesystem::file_size(out + "/model.safetensors")) /
                       double(std::filesystem::file_size(model('A') + "/model.safetensors"));
  EXPECT_LT(ratio, 0.5);
  EXPECT_NE(kiln("quantize --model " + model('A') + " --type nf4 --output " + out).status, 0);
}

TEST_F(QuantCli, BadTypeIsNamed) {
  auto e = kiln("export --model " + model('A') + " --format gguf --type q4_k --output " +
                (*dir_ / "x.gguf"));
  EXPECT_NE(e.status, 0);
  EXPECT_NE(e.output.find("unknown GGUF type 'q4_k'"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("q4_k_m"), std::string::npos) << e.output;
  auto q = kiln("quantize --model " + model('A') + " --type f16 --output " + (*dir_ / "y"));
  EXPECT_NE(q.status, 0);
  EXPECT_NE(q.output.find("kiln export"), std::string::npos) << q.output;
  EXPECT_FALSE(file_exists(*dir_ / "y"));
}

}  // namespace
}  // namespace kiln

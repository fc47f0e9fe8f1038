// GGUF against llama.cpp itself: a small random-weight Llama (GQA, so the q/k permutation is
// exercised with H != K) is exported to f32 and q8_0 GGUF; llama.cpp (npm node-llama-cpp, the
// prebuilt CPU binary installed by scripts/fetch_llama_cpp.sh) loads each file and continues a
// prompt greedily, and the ids must equal kiln's: the f32 model's Decoder for f32, and for q8_0
// the Decoder on the weights kiln imports back from the same file. Also: the f32 export imports
// back bit for bit, and q8_0 import equals quantize-then-dequantize. Every quantized mix kiln
// writes (q8_0, q4_0, q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k; the files llama-quantize makes, byte
// for byte) on a model whose rows are 256 wide, by teacher forcing: llama.cpp is fed kiln's
// greedy continuation and its logits after every prefix must lie within 8% of their rms of the
// Decoder's on kiln's import of the file (llama.cpp rounds activations to 8 bits and keeps K/V in
// f16; decoding any other weights, even the unquantized ones, lands 2x further off), and its
// argmax must be kiln's token wherever the choice is decided by more than that.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/gguf.h"
#include "kiln/model/decoder.h"
#include "kiln/quant/gguf_model.h"
#include "test_util.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.arch = Arch::llama;
  c.vocab_size = 257;  // 256 bytes + <|endoftext|>
  c.hidden = 64;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.intermediate = 128;
  c.max_positions = 128;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tie_embeddings = false;
  c.eos_token_id = 256;
  // Larger than GPT-2's 0.02 so that logits are far apart: greedy picks are then decided by the
  // model, not by rounding (the test reports the smallest top-1/top-2 gap it met).
  c.initializer_range = 0.25f;
  return c;
}

// Rows of 256 values: every matrix takes the K-quant types (no fallbacks). Small weights keep
// attention soft: at 0.25 it is near one-hot, and llama.cpp's rounding (f16 K/V cache, 8-bit
// activations) flips which position wins.
ModelConfig kquant_config() {
  ModelConfig c = tiny_config();
  c.hidden = 256;
  c.head_dim = 64;
  c.intermediate = 512;
  c.initializer_range = 0.02f;
  return c;
}

struct Greedy {
  std::vector<int> tokens;
  std::vector<float> gaps;                 // top-1 - top-2 logit at each step
  std::vector<std::vector<float>> logits;  // the logits each token was chosen from
  float min_gap = INFINITY;                // smallest of them
};

Greedy kiln_greedy(const Model& m, const std::vector<int>& prompt, int n) {
  Decoder dec(m, int(prompt.size()) + n + 1);
  Greedy g;
  std::vector<float> logits = dec.feed(prompt);
  for (int i = 0; i < n; ++i) {
    g.logits.push_back(logits);
    std::vector<float> s = logits;
    const int best = int(std::max_element(s.begin(), s.end()) - s.begin());
    const float top = s[best];
    s[best] = -INFINITY;
    g.gaps.push_back(top - *std::max_element(s.begin(), s.end()));
    g.min_gap = std::min(g.min_gap, g.gaps.back());
    if (best == m.config().eos_token_id) break;  // llama.cpp stops there, without it
    g.tokens.push_back(best);
    if (i + 1 < n) logits = dec.feed({best});
  }
  return g;
}

// kiln's logits after each prefix ids[0..p], p >= from - 1 (teacher forcing), by the Decoder.
std::vector<std::vector<float>> forced_logits(const Model& m, const std::vector<int>& ids,
                                              int from) {
  Decoder dec(m, int(ids.size()) + 1);
  std::vector<std::vector<float>> out{dec.feed({ids.begin(), ids.begin() + from})};
  for (size_t i = from; i < ids.size(); ++i) out.push_back(dec.feed({ids[i]}));
  return out;
}

std::vector<int> llama_cpp_greedy(const std::string& gguf, const std::vector<int>& prompt, int n) {
  const std::string root = test::source_dir();
  const std::string pkg = root + "/data/llama_cpp/node_modules/node-llama-cpp";
  if (!file_exists(pkg) ||
      !file_exists(root + "/data/llama_cpp/node_modules/@node-llama-cpp/linux-x64")) {
    ADD_FAILURE() << "llama.cpp is not installed (" << pkg
                  << " is missing): run scripts/fetch_llama_cpp.sh (scripts/setup.sh does)";
    return {};
  }
  std::ostringstream ids;
  for (size_t i = 0; i < prompt.size(); ++i) ids << (i ? "," : "") << prompt[i];
  const std::string cmd = "node " + root + "/tests/quant/llama_cpp_greedy.mjs " + gguf + " " +
                          std::to_string(n) + " " + ids.str() + " 2";
  test::CommandResult r = test::run_command(cmd);
  if (r.status != 0) {
    ADD_FAILURE() << "llama.cpp (node-llama-cpp) failed on " << gguf << " (exit " << r.status
                  << "):\n"
                  << r.output;
    return {};
  }
  // The last line is the JSON; anything before it is llama.cpp's log.
  const size_t start = r.output.rfind("{\"tokens\"");
  if (start == std::string::npos) {
    ADD_FAILURE() << "no result from llama.cpp:\n" << r.output;
    return {};
  }
  return nlohmann::json::parse(r.output.substr(start))["tokens"].get<std::vector<int>>();
}

// llama.cpp's logits after each prefix ids[0..p] for p >= from - 1 (teacher forcing).
std::vector<std::vector<float>> llama_cpp_logits(const std::string& gguf,
                                                 const std::vector<int>& ids, int from) {
  const std::string root = test::source_dir();
  std::ostringstream list;
  for (size_t i = 0; i < ids.size(); ++i) list << (i ? "," : "") << ids[i];
  test::CommandResult r =
      test::run_command("node " + root + "/tests/quant/llama_cpp_logits.mjs " + gguf + " " +
                        list.str() + " " + std::to_string(from) + " 2");
  const size_t start = r.output.rfind("{\"logits\"");
  if (r.status != 0 || start == std::string::npos) {
    ADD_FAILURE() << "llama.cpp (node-llama-cpp) failed on " << gguf << " (exit " << r.status
                  << "):\n"
                  << r.output;
    return {};
  }
  return nlohmann::json::parse(r.output.substr(start))["logits"]
      .get<std::vector<std::vector<float>>>();
}

std::string join(const std::vector<int>& v) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? " " : "") << v[i];
  return os.str();
}

class GgufLlamaCpp : public ::testing::Test {
 protected:
  void SetUp() override {
    model = std::make_unique<Model>(tiny_config());
    model->init_weights(1234);
  }
  // Teacher forcing on the file `km` exports as type t: llama.cpp's logits after each prefix of
  // kiln's greedy continuation (on kiln's import of the file) within 1% (f32) or 8% of their
  // rms, and the same argmax wherever kiln's choice is decided by more than that.
  void forced_logits_match(const Model& km, GgufType t, const std::string& prefix) {
    const std::string name(gguf_type_name(t));
    const std::string path = dir / (prefix + name + ".gguf");
    export_gguf(km, tok, path, t);
    GgufModel g = load_gguf_model(path);
    Greedy k = kiln_greedy(*g.model, prompt, n_new);
    std::vector<int> ids = prompt;
    ids.insert(ids.end(), k.tokens.begin(), k.tokens.end());
    const auto l = llama_cpp_logits(path, ids, int(prompt.size()));
    ASSERT_GE(l.size(), k.logits.size()) << name;
    double worst = 0, rms = 0;
    size_t count = 0, argmax_same = 0;
    for (size_t p = 0; p < k.logits.size(); ++p) {
      const auto& a = k.logits[p];
      ASSERT_EQ(l[p].size(), a.size()) << name;
      for (size_t v = 0; v < a.size(); ++v) {
        worst = std::max(worst, std::fabs(double(a[v]) - l[p][v]));
        rms += double(a[v]) * a[v], ++count;
      }
      argmax_same += std::max_element(l[p].begin(), l[p].end()) - l[p].begin() ==
                     std::max_element(a.begin(), a.end()) - a.begin();
    }
    rms = std::sqrt(rms / double(count));
    // The same comparison for the unquantized model: how far off decoding the wrong weights is.
    const auto ctl = forced_logits(km, ids, int(prompt.size()));
    double control = 0;
    for (size_t p = 0; p < k.logits.size(); ++p)
      for (size_t v = 0; v < ctl[p].size(); ++v)
        control = std::max(control, std::fabs(double(ctl[p][v]) - l[p][v]));
    std::printf(
        "%s%-7s steps %2zu  max |kiln - llama.cpp| = %.4f of the logits' rms %.3f "
        "(unquantized model: %.4f); same argmax %zu of %zu\n",
        prefix.c_str(), name.c_str(), k.logits.size(), worst / rms, rms, control / rms, argmax_same,
        k.logits.size());
    // f32 differs only by llama.cpp's f16 K/V cache; the quantized files also by its rounding of
    // activations to 8 bits (kiln's Decoder here runs the dequantized weights in fp32).
    EXPECT_LE(worst / rms, t == GgufType::f32 ? 0.01 : 0.08) << name;
    if (t != GgufType::f32 && t != GgufType::q8_0)
      EXPECT_GT(control, 2 * worst) << name << ": the check cannot tell the file's weights apart";
    for (size_t p = 0; p < k.logits.size(); ++p)
      if (k.gaps[p] > 2 * worst)
        EXPECT_EQ(std::max_element(l[p].begin(), l[p].end()) - l[p].begin(), k.tokens[p])
            << name << " step " << p << ": decided by " << k.gaps[p];
  }

  std::unique_ptr<Model> model;
  Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
  test::TempDir dir{"kiln-gguf-llama"};
  // "The quick brown fox" as bytes.
  std::vector<int> prompt{84, 104, 101, 32, 113, 117, 105, 99, 107, 32, 98, 114, 111, 119, 110};
  const int n_new = 24;
};

TEST_F(GgufLlamaCpp, F32RoundTripIsExact) {
  const std::string path = dir / "m-f32.gguf";
  export_gguf(*model, tok, path, GgufType::f32);
  GgufModel g = load_gguf_model(path);
  EXPECT_EQ(g.type, GgufType::f32);
  ASSERT_EQ(g.model->num_params(), model->num_params());
  EXPECT_EQ(0, std::memcmp(g.model->weights().f32(), model->weights().f32(),
                           size_t(model->num_params()) * 4));
  EXPECT_TRUE(g.qweights.empty());
  EXPECT_EQ(g.tokenizer.vocab_size(), tok.vocab_size());
  EXPECT_EQ(g.tokenizer.encode("hello <|endoftext|>", true),
            tok.encode("hello <|endoftext|>", true));
  EXPECT_EQ(g.model->config().kv_heads, 2);
  EXPECT_EQ(g.model->config().eos_token_id, 256);
}

TEST_F(GgufLlamaCpp, Q8RoundTripEqualsQuantizeDequantize) {
  const std::string path = dir / "m-q8.gguf";
  export_gguf(*model, tok, path, GgufType::q8_0);
  GgufModel g = load_gguf_model(path);
  EXPECT_EQ(g.type, GgufType::q8_0);
  for (const ParamInfo& p : model->params()) {
    const float* src = model->weights().f32() + p.offset;
    const float* got = g.model->weights().f32() + p.offset;
    std::vector<float> expect(src, src + p.numel());
    if (p.shape.size() == 2) {
      QTensor q = quantize(src, int(p.shape[0]), int(p.shape[1]), QType::q8_0);
      dequantize(q, expect.data());
      ASSERT_TRUE(g.qweights.count(p.name)) << p.name;
      EXPECT_EQ(g.qweights.at(p.name).data, q.data) << p.name << ": rows back in HF order";
    }
    ASSERT_EQ(0, std::memcmp(got, expect.data(), expect.size() * 4)) << p.name;
  }
}

TEST_F(GgufLlamaCpp, GreedyMatchesF32) {
  const std::string path = dir / "m-f32.gguf";
  export_gguf(*model, tok, path, GgufType::f32);
  Greedy k = kiln_greedy(*model, prompt, n_new);
  std::vector<int> l = llama_cpp_greedy(path, prompt, n_new);
  RecordProperty("kiln_f32", join(k.tokens));
  RecordProperty("min_gap", std::to_string(k.min_gap));
  std::printf("kiln f32:      %s (min top-1 gap %.4f)\nllama.cpp f32: %s\n", join(k.tokens).c_str(),
              k.min_gap, join(l).c_str());
  std::set<int> distinct(k.tokens.begin(), k.tokens.end());
  EXPECT_GE(distinct.size(), 4u) << "the continuation is degenerate: raise initializer_range";
  EXPECT_EQ(l, k.tokens);
}

TEST_F(GgufLlamaCpp, GreedyMatchesQ8) {
  const std::string path = dir / "m-q8.gguf";
  export_gguf(*model, tok, path, GgufType::q8_0);
  GgufModel g = load_gguf_model(path);
  Greedy k = kiln_greedy(*g.model, prompt, n_new);
  std::vector<int> l = llama_cpp_greedy(path, prompt, n_new);
  std::printf("kiln q8_0:      %s (min top-1 gap %.4f)\nllama.cpp q8_0: %s\n",
              join(k.tokens).c_str(), k.min_gap, join(l).c_str());
  EXPECT_EQ(l, k.tokens);
}

// Mixtral: the experts go out stacked as llama.cpp's ffn_{gate,up,down}_exps (the router as
// ffn_gate_inp, expert_count / expert_used_count in the metadata) and come back bit for bit;
// llama.cpp's MoE graph continues the prompt as kiln's decoder does, f32 and q8_0.
class GgufMixtral : public GgufLlamaCpp {
 protected:
  void SetUp() override {
    ModelConfig c = tiny_config();
    c.moe.experts = 4;
    c.moe.experts_per_tok = 2;
    // The first seed whose greedy continuation runs the whole length without eos and is not
    // degenerate (a model this small often says eos at once): deterministic, and cheap.
    for (uint64_t seed = 1; seed < 64; ++seed) {
      model = std::make_unique<Model>(c);
      model->init_weights(seed);
      const Greedy k = kiln_greedy(*model, prompt, n_new);
      if (int(k.tokens.size()) == n_new &&
          std::set<int>(k.tokens.begin(), k.tokens.end()).size() >= 8)
        return;
    }
    FAIL() << "no seed gives a usable continuation";
  }
};

TEST_F(GgufMixtral, F32RoundTripIsExact) {
  const std::string path = dir / "moe-f32.gguf";
  export_gguf(*model, tok, path, GgufType::f32);
  GgufModel g = load_gguf_model(path);
  EXPECT_EQ(g.model->config().moe.experts, 4);
  EXPECT_EQ(g.model->config().moe.experts_per_tok, 2);
  ASSERT_EQ(g.model->num_params(), model->num_params());
  EXPECT_EQ(0, std::memcmp(g.model->weights().f32(), model->weights().f32(),
                           size_t(model->num_params()) * 4));
  const gguf::File f = gguf::File::open(path);
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_exps.weight").dims, (std::vector<int64_t>{64, 128, 4}));
  EXPECT_EQ(f.tensor("blk.1.ffn_down_exps.weight").dims, (std::vector<int64_t>{128, 64, 4}));
  EXPECT_EQ(f.tensor("blk.1.ffn_gate_inp.weight").dims, (std::vector<int64_t>{64, 4}));
}

TEST_F(GgufMixtral, Q8KeepsTheRouterF32AndEachExpertsRows) {
  const std::string path = dir / "moe-q8.gguf";
  export_gguf(*model, tok, path, GgufType::q8_0);
  const gguf::File f = gguf::File::open(path);
  EXPECT_EQ(f.tensor("blk.0.ffn_gate_inp.weight").type, gguf::TensorType::f32);
  EXPECT_EQ(f.tensor("blk.0.ffn_up_exps.weight").type, gguf::TensorType::q8_0);
  GgufModel g = load_gguf_model(path);
  const ParamInfo& p = model->param("model.layers.0.block_sparse_moe.experts.3.w3.weight");
  QTensor q =
      quantize(model->weights().f32() + p.offset, int(p.shape[0]), int(p.shape[1]), QType::q8_0);
  ASSERT_TRUE(g.qweights.count(p.name));
  EXPECT_EQ(g.qweights.at(p.name).data, q.data);
}

TEST_F(GgufMixtral, GreedyMatchesLlamaCppF32) {
  const std::string path = dir / "moe-f32.gguf";
  export_gguf(*model, tok, path, GgufType::f32);
  Greedy k = kiln_greedy(*model, prompt, n_new);
  std::vector<int> l = llama_cpp_greedy(path, prompt, n_new);
  std::printf("kiln f32:      %s (min top-1 gap %.4f)\nllama.cpp f32: %s\n", join(k.tokens).c_str(),
              k.min_gap, join(l).c_str());
  std::set<int> distinct(k.tokens.begin(), k.tokens.end());
  EXPECT_GE(distinct.size(), 4u) << "the continuation is degenerate: choose another seed";
  EXPECT_EQ(l, k.tokens);
}

// q8_0 and q4_0 experts: llama.cpp's MoE graph over the quantized stacked experts, by teacher
// forcing (its 8-bit activations can flip a near-tied router choice in a free-running
// continuation).
TEST_F(GgufMixtral, LogitsMatchLlamaCppQuantized) {
  ModelConfig c = kquant_config();
  c.moe.experts = 4;
  c.moe.experts_per_tok = 2;
  Model km(c);
  km.init_weights(99);
  for (GgufType t : {GgufType::f32, GgufType::q8_0, GgufType::q4_0, GgufType::q4_k_m})
    forced_logits_match(km, t, "moe-");
}

// Teacher forcing: llama.cpp is fed kiln's greedy continuation and returns its logits after
// every prefix, so each step is compared on the same input (free-running continuations part
// for good at the first near-tie, which llama.cpp's 8-bit rounding of activations decides).
TEST_F(GgufLlamaCpp, LogitsMatchLlamaCppOnEveryMix) {
  auto km = std::make_unique<Model>(kquant_config());
  km->init_weights(99);
  for (GgufType t : {GgufType::f32, GgufType::q8_0, GgufType::q4_0, GgufType::q4_k_m,
                     GgufType::q5_k_m, GgufType::q6_k, GgufType::q3_k_m, GgufType::q2_k})
    forced_logits_match(*km, t, "m-");
}

}  // namespace
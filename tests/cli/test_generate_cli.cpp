// `kiln generate`, `chat` and `eval` on a GPT-2 model, as a user runs them: GPT-2 goes through the
// batched engine like Llama, so every decoding option works for it (--n, --beams, --stop,
// penalties, logit bias), and its greedy text is the Decoder oracle's (model/decoder.h).
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "kiln/io/file.h"
#include "kiln/model/decoder.h"
#include "kiln/model/model_io.h"
#include "kiln/tokenizer/tokenizer.h"
#include "train_test_util.h"

namespace kiln {
namespace {

class GenerateCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("generate-cli");
    write_file_atomic(*dir_ / "c.txt", test::word_corpus());
    write_file_atomic(*dir_ / "gpt2.yaml", R"(seed: 3
model:
  architectures: [GPT2LMHeadModel]
  n_embd: 32
  n_inner: 128
  n_layer: 2
  n_head: 4
  n_positions: 96
data:
  train: [CORPUS]
train: {steps: 60, batch_size: 4, seq_len: 32, eval_every: 0, checkpoint_every: 60,
        keep_checkpoints: 0, samples: 0}
optim: {lr: 3.0e-3, warmup_steps: 5}
)");
    auto r = kiln("train " + (*dir_ / "gpt2.yaml") + " run_dir=" + (*dir_ / "run") +
                  " data.train=[" + (*dir_ / "c.txt") + "] --threads 2");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static test::CommandResult kiln(const std::string& args) {
    return test::run_command(test::kiln_binary() + " " + args);
  }
  static std::string model() { return *dir_ / "run"; }
  static test::TempDir* dir_;
};
test::TempDir* GenerateCli::dir_ = nullptr;

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST_F(GenerateCli, Gpt2GreedyIsTheDecoders) {
  auto g = kiln("generate --model " + model() + " --prompt 'the cat' --max-new-tokens 20 " +
                "--temperature 0 --ignore-eos");
  ASSERT_EQ(g.status, 0) << g.output;
  const std::string dir = resolve_model_dir(model());
  auto m = load_model(dir);
  Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
  std::vector<int32_t> ids = tok.encode("the cat");
  Decoder dec(*m, m->config().max_positions);
  const std::vector<float>* logits = &dec.feed(std::vector<int>(ids.begin(), ids.end()));
  std::vector<int32_t> out;
  for (int i = 0; i < 20; ++i) {
    out.push_back(int32_t(std::max_element(logits->begin(), logits->end()) - logits->begin()));
    logits = &dec.feed({out.back()});
  }
  EXPECT_EQ(g.output, "the cat" + tok.decode(out) + "\n");
}

TEST_F(GenerateCli, Gpt2TakesEveryDecodingOption) {
  auto n = kiln("generate --model " + model() +
                " --prompt 'the' --max-new-tokens 12 --temperature 0.9 --seed 2 --n 3");
  ASSERT_EQ(n.status, 0) << n.output;
  for (int i = 0; i < 3; ++i)
    EXPECT_NE(n.output.find("[sample " + std::to_string(i) + "]\nthe"), std::string::npos)
        << n.output;
  auto b = kiln("generate --model " + model() + " --prompt 'the' --max-new-tokens 12 --beams 3");
  ASSERT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(count(b.output, "[beam "), 3) << b.output;
  auto p = kiln("generate --model " + model() +
                " --prompt 'the' --max-new-tokens 12 --repetition-penalty 1.3 --presence-penalty " +
                "0.5 --frequency-penalty 0.2 --min-p 0.05 --logit-bias 0:-5 --seed 1");
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_EQ(p.output.rfind("the", 0), 0u) << p.output;
}

TEST_F(GenerateCli, Gpt2StopsExactlyBeforeAStopString) {
  auto g = kiln("generate --model " + model() +
                " --prompt 'the' --max-new-tokens 30 --temperature 0 --ignore-eos");
  ASSERT_EQ(g.status, 0) << g.output;
  const std::string cont = g.output.substr(3, g.output.size() - 4);  // between prompt and \n
  ASSERT_GE(cont.size(), 6u) << g.output;
  const std::string stop = cont.substr(3, 2);
  auto s = kiln("generate --model " + model() +
                " --prompt 'the' --max-new-tokens 30 --temperature 0 --ignore-eos --stop '" + stop +
                "'");
  ASSERT_EQ(s.status, 0) << s.output;
  EXPECT_EQ(s.output, "the" + cont.substr(0, cont.find(stop)) + "\n");
}

TEST_F(GenerateCli, Gpt2ChatsAndEvaluates) {
  auto c = test::run_command("printf 'the cat\\n' | " + test::kiln_binary() + " chat --model " +
                             model() + " --max-new-tokens 8 --temperature 0");
  EXPECT_EQ(c.status, 0) << c.output;
  auto e = kiln("eval --model " + model() + " --text " + (*dir_ / "c.txt") + " --seq-len 32");
  ASSERT_EQ(e.status, 0) << e.output;
  auto j = nlohmann::json::parse(e.output.substr(e.output.rfind('{')));
  EXPECT_LT(j["loss"].get<double>(), j["unigram_entropy"].get<double>());  // it learned context
  EXPECT_EQ(j["tokens"].get<int64_t>() + 1,
            int64_t(Tokenizer::load(resolve_model_dir(model()) + "/tokenizer.json")
                        .encode(read_file(*dir_ / "c.txt"))
                        .size()));
}

}  // namespace
}  // namespace kiln

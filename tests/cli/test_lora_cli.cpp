// LoRA adapters in PEFT's format as a user applies them: `kiln merge` writes a Hugging Face
// checkpoint whose greedy output and loss equal the base's with `--adapter` applied in memory
// (generate, eval), for a Llama and a GPT-2 base, and (Llama) whose GGUF equals `kiln export
// --adapter`'s; a mismatched adapter is named and nothing is written.
#include <gtest/gtest.h>

#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "kiln/model/lora.h"
#include "kiln/model/model_io.h"
#include "train_test_util.h"

namespace kiln {
namespace {

class LoraCli : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    write_file_atomic(dir / "c.txt", test::word_corpus());
    const std::string arch = GetParam();
    const std::string model =
        arch == std::string("GPT2LMHeadModel")
            ? "{architectures: [GPT2LMHeadModel], n_embd: 32, n_layer: 2, n_head: 4, "
              "n_positions: 64, n_inner: 64}"
            : "{architectures: [LlamaForCausalLM], hidden_size: 32, intermediate_size: 64, "
              "num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 64}";
    write_file_atomic(dir / "base.yaml",
                      "seed: 3\nmodel: " + model + "\ndata: {train: [" + (dir / "c.txt") +
                          "]}\ntrain: {steps: 20, batch_size: 4, seq_len: 32, eval_every: 0, "
                          "samples: 0}\noptim: {lr: 3.0e-3, warmup_steps: 5}\n");
    auto r = kiln("train " + (dir / "base.yaml") + " run_dir=" + (dir / "base") + " --threads 2");
    ASSERT_EQ(r.status, 0) << r.output;
    // An adapter as PEFT would write one: r 4 on two matrices per layer, large enough to change
    // the greedy text.
    auto base = load_model(resolve_model_dir(dir / "base"));
    LoraAdapter ad;
    ad.config.r = 4;
    ad.config.alpha = 16;
    Rng rng(11);
    for (const ParamInfo& p : base->params()) {
      const bool attn = p.name.find("q_proj.weight") != std::string::npos ||
                        p.name.find("v_proj.weight") != std::string::npos ||
                        p.name.find("c_attn.weight") != std::string::npos;
      if (!attn) continue;
      const bool conv1d = base->config().arch == Arch::gpt2;
      const int64_t in = conv1d ? p.shape[0] : p.shape[1], out = conv1d ? p.shape[1] : p.shape[0];
      LoraLayer l{p.name, Tensor::empty({4, in}), Tensor::empty({out, 4})};
      for (int64_t i = 0; i < l.a.numel(); ++i) l.a.f32()[i] = 0.3f * rng.normal();
      for (int64_t i = 0; i < l.b.numel(); ++i) l.b.f32()[i] = 0.3f * rng.normal();
      ad.layers.push_back(std::move(l));
    }
    save_lora_adapter(ad, dir / "lora");
  }
  test::CommandResult kiln(const std::string& args) {
    return test::run_command(test::kiln_binary() + " " + args);
  }
  std::string greedy(const std::string& model_args) {
    auto r = kiln("generate " + model_args + " --prompt 'the cat' --max-new-tokens 16 " +
                  "--temperature 0 --ignore-eos");
    EXPECT_EQ(r.status, 0) << r.output;
    return r.output.substr(r.output.find("the cat"));
  }
  test::TempDir dir{"lora-cli"};
};

TEST_P(LoraCli, MergedEqualsAppliedAndDiffersFromTheBase) {
  auto m = kiln("merge --model " + (dir / "base") + " --adapter " + (dir / "lora") + " --output " +
                (dir / "merged"));
  ASSERT_EQ(m.status, 0) << m.output;
  const std::string merged = greedy("--model " + (dir / "merged"));
  EXPECT_EQ(greedy("--model " + (dir / "base") + " --adapter " + (dir / "lora")), merged);
  EXPECT_NE(greedy("--model " + (dir / "base")), merged);
  write_file_atomic(dir / "val.txt", test::word_corpus().substr(0, 3000));
  auto e1 = kiln("eval --model " + (dir / "merged") + " --text " + (dir / "val.txt"));
  auto e2 = kiln("eval --model " + (dir / "base") + " --adapter " + (dir / "lora") + " --text " +
                 (dir / "val.txt"));
  ASSERT_EQ(e1.status, 0) << e1.output;
  EXPECT_EQ(e1.output.substr(e1.output.find('{')), e2.output.substr(e2.output.find('{')));
  // The merged directory is a whole model: it loads alone, with its tokenizer.
  EXPECT_TRUE(file_exists(dir / "merged/tokenizer.json"));
  m = kiln("merge --model " + (dir / "base") + " --adapter " + (dir / "lora") + " --output " +
           (dir / "merged"));
  EXPECT_NE(m.status, 0);
  EXPECT_NE(m.output.find("exists"), std::string::npos) << m.output;
  // export --adapter writes the merged model's GGUF (GGUF export is Llama's only).
  if (std::string(GetParam()) != "LlamaForCausalLM") return;
  auto x1 = kiln("export --model " + (dir / "merged") + " --type f32 --output " + (dir / "m.gguf"));
  auto x2 = kiln("export --model " + (dir / "base") + " --adapter " + (dir / "lora") +
                 " --type f32 --output " + (dir / "a.gguf"));
  ASSERT_EQ(x1.status, 0) << x1.output;
  ASSERT_EQ(x2.status, 0) << x2.output;
  EXPECT_EQ(read_file(dir / "m.gguf"), read_file(dir / "a.gguf"));
}

TEST_P(LoraCli, AnAdapterForAnotherModelIsNamedAndNothingIsWritten) {
  write_file_atomic(
      dir / "lora/adapter_config.json",
      read_file(dir / "lora/adapter_config.json")
          .replace(read_file(dir / "lora/adapter_config.json").find("\"r\": 4"), 6, "\"r\": 2"));
  auto m = kiln("merge --model " + (dir / "base") + " --adapter " + (dir / "lora") + " --output " +
                (dir / "merged"));
  EXPECT_NE(m.status, 0);
  EXPECT_NE(m.output.find("for r = 2"), std::string::npos) << m.output;
  EXPECT_FALSE(file_exists(dir / "merged"));
  EXPECT_FALSE(file_exists(dir / "merged.tmp"));
}

INSTANTIATE_TEST_SUITE_P(Families, LoraCli,
                         ::testing::Values("LlamaForCausalLM", "GPT2LMHeadModel"));

}  // namespace
}  // namespace kiln

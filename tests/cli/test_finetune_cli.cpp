// `kiln finetune` as a user runs it: a tiny Llama pretrained by `kiln train`, then fine-tuned on
// generated chat records in each of the three SFT shapes. Checked: the loss on the replies falls
// and the fine-tuned model answers as the data taught it (greedy, through `kiln generate`); the
// chat template travels with the checkpoints; a stopped and resumed run is bit-identical; bad
// records and configs are refused naming the file, line or key. method lora: the same task learnt
// by an adapter whose checkpoints are PEFT adapters (generate --adapter, merge), at a fraction of
// the state, and resumed bit-identically with dropout on. method qlora: the same over a base whose
// projections are held in NF4.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli/train_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::run_command;
using test::run_losses;

// A question about an animal is answered by its sound: a mapping the base has never seen.
const char* kAnimals[][2] = {{"cat", "meow"}, {"dog", "woof"}, {"cow", "moo"}, {"duck", "quack"}};

std::string sft_records(const std::string& shape, int n) {
  Rng rng(5);
  std::string out;
  for (int i = 0; i < n; ++i) {
    const auto& a = kAnimals[rng.below(4)];
    const std::string q = std::string("what does the ") + a[0] + " say?";
    const std::string reply = std::string(" ") + a[1] + ".";
    nlohmann::json j;
    if (shape == "text") j["text"] = "### Human: " + q + " ### Assistant:" + reply;
    if (shape == "messages")
      j["messages"] = {{{"role", "user"}, {"content", q}},
                       {{"role", "assistant"}, {"content", reply}}};
    if (shape == "prompt") j = {{"prompt", "Q: " + q + " A:"}, {"completion", reply}};
    out += j.dump() + "\n";
  }
  return out;
}

class FinetuneCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("kiln-finetune");
    write_file_atomic(*dir_ / "corpus.txt", test::word_corpus());
    write_file_atomic(*dir_ / "base.yaml", "run_dir: " + dir_->path() + "/base\nseed: 3\n" +
                                               R"(model:
  architectures: [LlamaForCausalLM]
  hidden_size: 48
  intermediate_size: 96
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  max_position_embeddings: 64
data: {train: [)" + dir_->path() + R"(/corpus.txt], tokenizer: byte}
train: {steps: 30, batch_size: 8, seq_len: 48, eval_every: 0, samples: 0, checkpoint_every: 0}
optim: {lr: 3.0e-3, warmup_steps: 5}
)");
    auto r = kiln("train " + *dir_ / "base.yaml");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }

  static test::CommandResult kiln(const std::string& args) {
    return run_command("OMP_NUM_THREADS=2 " + test::kiln_binary() + " " + args);
  }
  // A fine-tuning config over SFT data `data` (a file) into run `run`.
  static std::string config(const std::string& run, const std::string& data, int steps,
                            const std::string& extra = "") {
    const std::string path = *dir_ / (run + ".yaml");
    write_file_atomic(path, "run_dir: " + dir_->path() + "/" + run +
                                "\nseed: 4\nmodel: {base: " + dir_->path() +
                                "/base}\ndata: {sft: [" + data + "], val_fraction: 0.1}\n" +
                                "train: {steps: " + std::to_string(steps) +
                                ", batch_size: 8, seq_len: 64, eval_every: 0, samples: 0, "
                                "checkpoint_every: 20}\noptim: {lr: 5.0e-3, warmup_steps: 5}\n" +
                                extra);
    return path;
  }
  static test::TempDir* dir_;
};
test::TempDir* FinetuneCli::dir_ = nullptr;

// The model's greedy continuation of `prompt` (what `kiln generate` prints after it).
std::string greedy(const std::string& model, const std::string& prompt, int tokens = 8) {
  auto r = run_command("OMP_NUM_THREADS=2 " + test::kiln_binary() + " generate --model " + model +
                       " --prompt '" + prompt + "' --max-new-tokens " + std::to_string(tokens) +
                       " --temperature 0");
  EXPECT_EQ(r.status, 0) << r.output;
  const size_t at = r.output.find(prompt);
  return at == std::string::npos ? r.output : r.output.substr(at + prompt.size());
}

TEST_F(FinetuneCli, EachShapeLearnsTheReplies) {
  const std::string prompts[] = {
      "### Human: what does the {} say? ### Assistant:",
      "### Human: what does the {} say? ### Assistant:", "Q: what does the {} say? A:"};
  int i = 0;
  for (const std::string shape : {"text", "messages", "prompt"}) {
    const std::string data = *dir_ / (shape + ".jsonl");
    write_file_atomic(data, sft_records(shape, 400));
    const std::string run = dir_->path() + "/ft-" + shape;
    auto r = kiln("finetune " + config("ft-" + shape, data, 200));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("assistant/completion only"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(" 0 cut to data.max_seq_length"), std::string::npos) << r.output;
    const std::vector<double> loss = run_losses(run);
    ASSERT_EQ(loss.size(), 200u);
    EXPECT_LT(loss.back(), 0.05 * loss.front()) << shape;
    // Every animal's question gets its sound (greedy), where the base says something else.
    std::string prompt = prompts[i++];
    for (const auto& [animal, sound] : kAnimals) {
      std::string p = prompt;
      p.replace(p.find("{}"), 2, animal);
      const std::string want = std::string(" ") + sound + ".";
      EXPECT_EQ(greedy(run, p).substr(0, want.size()), want) << shape << ": " << p;
      if (shape == "text")
        EXPECT_NE(greedy(dir_->path() + "/base", p).substr(0, want.size()), want);
    }
    // kiln eval --sft scores the same: every record's reply exact, the base's none.
    auto ev = kiln("eval --model " + run + " --sft " + data + " --limit 40");
    ASSERT_EQ(ev.status, 0) << ev.output;
    EXPECT_NE(ev.output.find("\"examples\":40,\"exact_match\":1.0000,\"word_error_rate\":0.0000"),
              std::string::npos)
        << ev.output;
    if (shape == "text") {
      ev = kiln("eval --model " + dir_->path() + "/base --sft " + data + " --limit 40");
      EXPECT_NE(ev.output.find("\"exact_match\":0.0000"), std::string::npos) << ev.output;
    }
  }
}

// data.packing: several records per row (positions restarting, attention within each): the
// task is learnt, a stopped run resumes bit-identically, and data- and pipeline-parallel runs
// (mpirun, 2 ranks) give the one-process losses.
TEST_F(FinetuneCli, PackedRowsLearnTheRepliesAndResumeExactly) {
  // Short records ("cat?" -> " meow."), so 6 fit in a row of 64.
  std::string records;
  Rng rng(8);
  for (int i = 0; i < 400; ++i) {
    const auto& a = kAnimals[rng.below(4)];
    records += nlohmann::json{{"prompt", std::string(a[0]) + "?"},
                              {"completion", std::string(" ") + a[1] + "."}}
                   .dump() +
               "\n";
  }
  const std::string data = *dir_ / "packed.jsonl";
  write_file_atomic(data, records);
  const std::string packed = " data.packing=true";
  auto r = kiln("finetune " + config("packed", data, 100) + packed);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("packed into rows"), std::string::npos) << r.output;
  const std::string run = dir_->path() + "/packed";
  const std::vector<double> loss = run_losses(run);
  ASSERT_EQ(loss.size(), 100u);
  EXPECT_LT(loss.back(), 0.05 * loss.front());
  for (const auto& [animal, sound] : kAnimals) {
    const std::string p = std::string(animal) + "?";
    const std::string want = std::string(" ") + sound + ".";
    EXPECT_EQ(greedy(run, p).substr(0, want.size()), want) << p;
  }
  std::filesystem::remove_all(run + "/checkpoints/step_00000100");
  auto rest = kiln("finetune " + config("packed", data, 100) + packed + " --resume");
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_EQ(run_losses(run), loss);
  // Under data and pipeline parallelism (mpirun) the packed rows give the one-process losses.
  ASSERT_EQ(kiln("finetune " + config("packed-1", data, 12) + packed).status, 0);
  const std::vector<double> one = run_losses(dir_->path() + "/packed-1");
  for (const std::string layout : {"", "parallel.pp=2"}) {  // dp 2, then pp 2
    const std::string name = layout.empty() ? "packed-dp" : "packed-pp";
    auto m = run_command(test::mpirun_command(2, 180) + test::kiln_binary() + " finetune " +
                         config(name, data, 12) + packed + " " + layout);
    ASSERT_EQ(m.status, 0) << m.output;
    const std::vector<double> got = run_losses(dir_->path() + "/" + name);
    ASSERT_EQ(got.size(), one.size()) << layout;
    for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(got[i], one[i], 1e-5 * one[i]) << layout;
  }
}

TEST_F(FinetuneCli, AConfiguredTemplateTravelsWithTheCheckpoint) {
  const std::string data = *dir_ / "m.jsonl";
  write_file_atomic(data, sft_records("messages", 50));
  auto r = kiln("finetune " + config("ft-chatml", data, 2, "") + " data.chat_template=chatml");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("chatml chat template"), std::string::npos) << r.output;
  const std::string ckpt = dir_->path() + "/ft-chatml/checkpoints/step_00000002";
  ASSERT_TRUE(file_exists(ckpt + "/tokenizer_config.json")) << r.output;
  EXPECT_NE(read_file(ckpt + "/tokenizer_config.json").find("<|im_start|>"), std::string::npos);
}

TEST_F(FinetuneCli, StoppedAndResumedEqualsUnstopped) {
  const std::string data = *dir_ / "p.jsonl";
  write_file_atomic(data, sft_records("prompt", 30));  // 27 train examples: epochs turn over
  ASSERT_EQ(kiln("finetune " + config("whole", data, 40)).status, 0);
  ASSERT_EQ(kiln("finetune " + config("part", data, 40)).status, 0);
  // The run's later checkpoint is lost: it resumes from step 20, mid-epoch, and redoes 21..40.
  std::filesystem::remove_all(dir_->path() + "/part/checkpoints/step_00000040");
  auto rest = kiln("finetune " + config("part", data, 40) + " --resume");
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_NE(rest.output.find("step 20"), std::string::npos) << rest.output;
  EXPECT_EQ(run_losses(dir_->path() + "/part"), run_losses(dir_->path() + "/whole"));
}

TEST_F(FinetuneCli, BadRecordsAndConfigsAreNamed) {
  const std::string data = *dir_ / "bad.jsonl";
  write_file_atomic(data, sft_records("text", 3) +
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  auto r = kiln("finetune " + config("bad", data, 2));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find(data + ":4: no assistant message"), std::string::npos) << r.output;
  EXPECT_FALSE(file_exists(dir_->path() + "/bad/checkpoints"));

  const std::string ok = *dir_ / "ok.jsonl";
  write_file_atomic(ok, sft_records("text", 20));
  r = kiln("finetune " + config("qlora-16", ok, 2, "method: qlora\n") + " train.precision=fp16");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("method qlora computes in bf16 (or fp32)"), std::string::npos)
      << r.output;
  r = kiln("finetune " + config("lora-r", ok, 2, "method: lora\nlora: {r: 0}\n"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("'lora.r' has an invalid value '0'"), std::string::npos) << r.output;
  r = kiln("finetune " + config("lora-t", ok, 2, "method: lora\nlora: {target_modules: [c_fc]}\n"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("'c_fc', which matches no linear layer of this Llama model"),
            std::string::npos)
      << r.output;
  r = kiln("finetune " + config("lora-m", ok, 2, "lora: {r: 4}\n"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("a lora section with method full"), std::string::npos) << r.output;
  EXPECT_FALSE(file_exists(dir_->path() + "/lora-t/checkpoints"));
  r = kiln("finetune " + *dir_ / "base.yaml");  // a pretraining config: no base
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("fine-tuning starts from a model"), std::string::npos) << r.output;
  r = kiln("finetune " + config("long", ok, 2) + " data.max_seq_length=100");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("must be at most train.seq_len + 1"), std::string::npos) << r.output;
}

// The metrics' state_bytes of a run (weights, gradients and AdamW moments per rank).
int64_t state_bytes(const std::string& run) {
  const std::string m = read_file(run + "/metrics.jsonl");
  return nlohmann::json::parse(m.substr(0, m.find('\n')))["state_bytes"].get<int64_t>();
}

TEST_F(FinetuneCli, LoraLearnsTheRepliesAsAPeftAdapter) {
  const std::string data = *dir_ / "lora.jsonl";
  write_file_atomic(data, sft_records("text", 400));
  const std::string lora = "method: lora\nlora: {r: 8, alpha: 16, target_modules: all-linear}\n";
  auto r = kiln("finetune " + config("lora", data, 200, lora) + " optim.lr=1e-2");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("LoRA r 8 alpha 16 dropout 0 on all-linear"), std::string::npos)
      << r.output;
  const std::string run = dir_->path() + "/lora", ckpt = run + "/checkpoints/step_00000200";
  const std::vector<double> loss = run_losses(run);
  ASSERT_EQ(loss.size(), 200u);
  // The LM head and embeddings stay frozen, and this base (30 steps on 8 words) has never
  // trained the rows of most bytes of the replies or of the end token: the adapter learns the
  // sounds but not the end, so the loss falls less than full fine-tuning's (PyTorch with the
  // same LoRA on this base plateaus alike, 4.3 -> 3.3 nats on the raw text in 200 steps).
  EXPECT_LT(loss.back(), 0.85 * loss.front());
  // The checkpoint is a PEFT adapter, not a model.
  EXPECT_TRUE(file_exists(ckpt + "/adapter_config.json"));
  EXPECT_TRUE(file_exists(ckpt + "/adapter_model.safetensors"));
  EXPECT_FALSE(file_exists(ckpt + "/model.safetensors"));
  const auto cfg = nlohmann::json::parse(read_file(ckpt + "/adapter_config.json"));
  EXPECT_EQ(cfg["r"], 8);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json::array({"all-linear"}));
  // The base with the adapter answers with the animal's sound, where the base does not; the
  // merged model answers the same.
  const std::string base = dir_->path() + "/base";
  // (--adapter takes a checkpoint, or a run directory for its newest one.)
  ASSERT_EQ(
      kiln("merge --model " + base + " --adapter " + run + " --output " + run + "-merged").status,
      0);
  for (const auto& [animal, sound] : kAnimals) {
    const std::string p =
        std::string("### Human: what does the ") + animal + " say? ### Assistant:";
    const std::string want = std::string(" ") + sound;
    auto g = run_command("OMP_NUM_THREADS=2 " + test::kiln_binary() + " generate --model " + base +
                         " --adapter " + ckpt + " --prompt '" + p +
                         "' --max-new-tokens 8 --temperature 0");
    ASSERT_EQ(g.status, 0) << g.output;
    const size_t at = g.output.find(p);
    ASSERT_NE(at, std::string::npos) << g.output;
    const std::string answer = g.output.substr(at + p.size());
    EXPECT_EQ(answer.substr(0, want.size()), want) << p;
    EXPECT_NE(greedy(base, p).substr(0, want.size()), want) << p;
    EXPECT_EQ(greedy(run + "-merged", p), answer) << p;
  }
  // The state is the frozen base's weights and the adapter's weights, gradient and two moments:
  // r (in + out) per adapted projection, 7 per layer (C 48, H*D 48, K*D 24, F 96), 2 layers.
  const int64_t adapter = 2 * 8 * ((48 + 48) * 2 + (48 + 24) * 2 + (48 + 96) * 3);
  EXPECT_NE(r.output.find(std::to_string(adapter) + " trainable of "), std::string::npos)
      << r.output;
  const std::string of = r.output.substr(r.output.find(" trainable of ") + 14);
  const int64_t total = std::stoll(of), base_params = total - adapter;
  EXPECT_EQ(state_bytes(run), 4 * base_params + 16 * adapter);
  ASSERT_EQ(kiln("finetune " + config("full-2", data, 2)).status, 0);
  EXPECT_EQ(state_bytes(dir_->path() + "/full-2"), 16 * base_params);
}

// NF4's storage of n values (ops/nf4.h): codes, scale codes, nested absmaxes and the offset.
int64_t nf4_bytes(int64_t n) {
  return n / 2 + n / 64 + 4 * ((n / 64 + 255) / 256) + 4;
}

TEST_F(FinetuneCli, QloraLearnsTheRepliesOverAnNf4Base) {
  const std::string data = *dir_ / "qlora.jsonl";
  write_file_atomic(data, sft_records("text", 400));
  const std::string qlora = "method: qlora\nlora: {r: 8, alpha: 16, target_modules: all-linear}\n";
  auto r =
      kiln("finetune " + config("qlora", data, 200, qlora) + " optim.lr=1e-2 train.precision=bf16");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("41472 linear weights in NF4 (4.147 bits each)"), std::string::npos)
      << r.output;
  const std::string run = dir_->path() + "/qlora", ckpt = run + "/checkpoints/step_00000200";
  const std::vector<double> loss = run_losses(run);
  ASSERT_EQ(loss.size(), 200u);
  EXPECT_LT(loss.back(), 0.85 * loss.front());
  EXPECT_TRUE(file_exists(ckpt + "/adapter_model.safetensors"));
  // The adapter answers over the unquantized base too (as PEFT applies a QLoRA adapter).
  const std::string base = dir_->path() + "/base";
  for (const auto& [animal, sound] : kAnimals) {
    const std::string p =
        std::string("### Human: what does the ") + animal + " say? ### Assistant:";
    auto g = run_command("OMP_NUM_THREADS=2 " + test::kiln_binary() + " generate --model " + base +
                         " --adapter " + ckpt + " --prompt '" + p +
                         "' --max-new-tokens 8 --temperature 0");
    ASSERT_EQ(g.status, 0) << g.output;
    EXPECT_NE(g.output.find(p + " " + sound), std::string::npos) << g.output;
  }
  // The state: the base's other weights in fp32, its 14 projections (2 layers of q 48 x 48,
  // k and v 24 x 48, o 48 x 48, gate and up 96 x 48, down 48 x 96) in NF4, and the adapter's
  // weights, gradient and two moments.
  int64_t nf4 = 0, linear = 0;
  for (int64_t n : {2304, 1152, 1152, 2304, 4608, 4608, 4608})
    nf4 += 2 * nf4_bytes(n), linear += 2 * n;
  const int64_t adapter = 2 * 8 * ((48 + 48) * 2 + (48 + 24) * 2 + (48 + 96) * 3);
  const std::string of = r.output.substr(r.output.find(" trainable of ") + 14);
  const int64_t base_params = std::stoll(of) - adapter;
  EXPECT_EQ(state_bytes(run), 4 * (base_params - linear) + nf4 + 16 * adapter);
  // Resuming repeats the run bit for bit (the base is quantized again, identically).
  std::filesystem::remove_all(ckpt);
  auto rest = kiln("finetune " + config("qlora", data, 200, qlora) +
                   " optim.lr=1e-2 train.precision=bf16 --resume");
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_EQ(run_losses(run), loss);
}

TEST_F(FinetuneCli, LoraWithDropoutStoppedAndResumedEqualsUnstopped) {
  const std::string data = *dir_ / "pl.jsonl";
  write_file_atomic(data, sft_records("prompt", 30));
  const std::string lora = "method: lora\nlora: {r: 4, dropout: 0.1}\n";
  ASSERT_EQ(kiln("finetune " + config("lwhole", data, 40, lora)).status, 0);
  ASSERT_EQ(kiln("finetune " + config("lpart", data, 40, lora)).status, 0);
  std::filesystem::remove_all(dir_->path() + "/lpart/checkpoints/step_00000040");
  auto rest = kiln("finetune " + config("lpart", data, 40, lora) + " --resume");
  ASSERT_EQ(rest.status, 0) << rest.output;
  EXPECT_NE(rest.output.find("step 20"), std::string::npos) << rest.output;
  EXPECT_EQ(run_losses(dir_->path() + "/lpart"), run_losses(dir_->path() + "/lwhole"));
  // A LoRA checkpoint does not resume a full fine-tune.
  auto wrong = kiln("finetune " + config("lpart", data, 40) + " --resume");
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.output.find("holds a LoRA adapter, not a whole model"), std::string::npos)
      << wrong.output;
}

}  // namespace
}  // namespace kiln

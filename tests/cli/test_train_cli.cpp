// `kiln train`, `eval`, `generate` and `plot` as a user runs them: a tiny model on a generated
// corpus. The central property: a run stopped at step k (killed, or its later checkpoints lost)
// and resumed reaches step n with bit-identical losses to a run that never stopped.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

// A corpus with learnable structure: sentences from a small grammar.
std::string make_corpus(int sentences) {
  const char* subj[] = {"the cat", "a dog", "my friend", "the old man", "she", "we"};
  const char* verb[] = {"sees", "likes", "walks to", "finds", "paints", "remembers"};
  const char* obj[] = {"the house.", "a red ball.", "the river.", "an apple.", "the town."};
  Rng rng(9);
  std::string s;
  for (int i = 0; i < sentences; ++i)
    s +=
        std::string(subj[rng.below(6)]) + " " + verb[rng.below(6)] + " " + obj[rng.below(5)] + "\n";
  return s;
}

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file_atomic(dir / "corpus.txt", make_corpus(3000));
    write_file_atomic(dir / "tiny.yaml", R"(run_dir: RUN
seed: 3
model:
  architectures: [LlamaForCausalLM]
  hidden_size: 32
  intermediate_size: 64
  num_hidden_layers: 2
  num_attention_heads: 4
  num_key_value_heads: 2
  max_position_embeddings: 64
data:
  train: [CORPUS]
  val_fraction: 0.05
train:
  steps: 40
  batch_size: 4
  seq_len: 32
  eval_every: 10
  eval_batches: 2
  checkpoint_every: 10
  keep_checkpoints: 0
  samples: 0
optim:
  lr: 3.0e-3
  warmup_steps: 5
)");
  }
  test::CommandResult kiln(const std::string& args) {
    return test::run_command(test::kiln_binary() + " " + args);
  }
  std::string train_args(const std::string& run) {
    return "train " + (dir / "tiny.yaml") + " run_dir=" + run + " data.train=[" +
           (dir / "corpus.txt") + "] --threads 2";
  }
  // step -> the metrics record's loss, exactly as written.
  std::map<int64_t, std::string> losses(const std::string& run) {
    std::map<int64_t, std::string> out;
    std::istringstream in(read_file(run + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      out[j["step"].get<int64_t>()] =
          j["loss"].dump() + (j.contains("val_loss") ? " val " + j["val_loss"].dump() : "");
    }
    return out;
  }
  test::TempDir dir{"train-cli"};
};

TEST_F(TrainCli, ResumeAfterLostCheckpointsIsBitExact) {
  auto a = kiln(train_args(dir / "a"));
  ASSERT_EQ(a.status, 0) << a.output;
  auto b = kiln(train_args(dir / "b"));
  ASSERT_EQ(b.status, 0) << b.output;
  auto full = losses(dir / "a");
  ASSERT_EQ(full.size(), 40u);
  EXPECT_EQ(losses(dir / "b"), full);  // the same run twice is deterministic
  // Pretend run b died right after step 10: only its first checkpoint survives.
  for (const char* s : {"step_00000020", "step_00000030", "step_00000040"})
    fs::remove_all(dir / "b" + "/checkpoints/" + s);
  auto r = kiln(train_args(dir / "b") + " --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos);
  EXPECT_EQ(losses(dir / "b"), full);
}

// A checkpoint file whose bytes changed on disk is named at load (checksums.json, written at
// save), by --resume and by inference alike, and a clean earlier checkpoint still resumes.
TEST_F(TrainCli, FlippedBytesInACheckpointAreDetectedAndNamed) {
  ASSERT_EQ(kiln(train_args(dir / "a") + " train.steps=20").status, 0);
  const std::string last = dir / "a" + "/checkpoints/step_00000020";
  ASSERT_TRUE(file_exists(last + "/checksums.json"));
  for (const char* name : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string path = last + "/" + name;
    std::string bytes = read_file(path);
    bytes[bytes.size() / 2] ^= 0x04;  // one bit, in the tensor data
    write_file_atomic(path, bytes);
    auto r = kiln(train_args(dir / "a") + " train.steps=20 --resume");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find(path + " does not match its checksum"), std::string::npos) << r.output;
    if (std::string(name) == "model.safetensors") {
      r = kiln("generate --model " + last + " --prompt the --max-new-tokens 2");
      EXPECT_NE(r.status, 0);
      EXPECT_NE(r.output.find("does not match its checksum"), std::string::npos) << r.output;
    }
    bytes[bytes.size() / 2] ^= 0x04;
    write_file_atomic(path, bytes);
  }
  fs::remove_all(last);  // a damaged last checkpoint removed: the run resumes from step 10
  auto r = kiln(train_args(dir / "a") + " train.steps=20 --resume");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(TrainCli, Bf16TrainingWithBf16CheckpointsResumesBitExactly) {
  const std::string extra = " train.steps=20 train.precision=bf16 train.checkpoint_dtype=bf16";
  ASSERT_EQ(kiln(train_args(dir / "a") + extra).status, 0);
  ASSERT_EQ(kiln(train_args(dir / "b") + extra).status, 0);
  std::string ck = dir / "b" + "/checkpoints/step_00000010";
  // The model file is bf16 (half the bytes of fp32), the masters ride in optimizer.safetensors.
  EXPECT_NE(read_file(ck + "/model.safetensors").find("\"BF16\""), std::string::npos);
  EXPECT_NE(read_file(ck + "/optimizer.safetensors").find("master_weights"), std::string::npos);
  fs::remove_all(dir / "b" + "/checkpoints/step_00000020");
  ASSERT_EQ(kiln(train_args(dir / "b") + extra + " --resume").status, 0);
  EXPECT_EQ(losses(dir / "b"), losses(dir / "a"));
  auto g = kiln("generate --model " + ck + " --prompt 'the' --max-new-tokens 5");
  EXPECT_EQ(g.status, 0) << g.output;  // a bf16 checkpoint loads for inference
}

TEST_F(TrainCli, CurateTokenizeTrainOnIndexedDatasetResumesBitExactly) {
  // The quickstart's path on a small scale: JSONL -> curate -> tokenize -> train on data.blend.
  std::string jsonl;
  std::istringstream corpus(read_file(dir / "corpus.txt"));
  std::string line, doc;
  for (int i = 0; std::getline(corpus, line); ++i) {
    doc += line + "\n";
    if (i % 60 == 59) jsonl += nlohmann::json({{"text", doc}}).dump() + "\n", doc.clear();
  }
  write_file_atomic(dir / "raw.jsonl", jsonl + jsonl.substr(0, jsonl.find('\n') + 1));  // + a dup
  // The toy grammar is repetitive by design, so only the steps that must pass it run here (the
  // quality filters have their own oracle tests in tests/data/).
  auto c = kiln("data curate --steps normalize,exact_dedup,pii --input " + (dir / "raw.jsonl") +
                " --output " + (dir / "clean.jsonl"));
  ASSERT_EQ(c.status, 0) << c.output;
  std::istringstream clean(read_file(dir / "clean.jsonl"));
  int kept = 0;
  while (std::getline(clean, line)) ++kept;
  EXPECT_EQ(kept, 50);  // the planted duplicate is gone
  ASSERT_EQ(kiln("tokenizer train --input " + (dir / "corpus.txt") + " --vocab-size 300 " +
                 "--special '<|endoftext|>' --output " + (dir / "tok.json"))
                .status,
            0);
  auto t = kiln("data tokenize --input " + (dir / "clean.jsonl") + " --tokenizer " +
                (dir / "tok.json") + " --output " + (dir / "ds"));
  ASSERT_EQ(t.status, 0) << t.output;
  const std::string extra = " data.blend=[" + (dir / "ds") +
                            "] data.split=90,10,0 data.tokenizer=" + (dir / "tok.json") +
                            " train.steps=20";
  auto a = kiln(train_args(dir / "a") + extra);
  ASSERT_EQ(a.status, 0) << a.output;
  ASSERT_EQ(kiln(train_args(dir / "b") + extra).status, 0);
  fs::remove_all(dir / "b" + "/checkpoints/step_00000020");
  ASSERT_EQ(kiln(train_args(dir / "b") + extra + " --resume").status, 0);
  auto la = losses(dir / "a");
  EXPECT_EQ(la.size(), 20u);
  EXPECT_EQ(losses(dir / "b"), la);
  EXPECT_NE(la.at(10).find("val"), std::string::npos);  // validation from the split
}

TEST_F(TrainCli, KilledRunResumesToTheSameCurve) {
  auto a = kiln(train_args(dir / "a") + " train.steps=200 train.checkpoint_every=20");
  ASSERT_EQ(a.status, 0) << a.output;
  // Start the same run and SIGKILL it once its first checkpoint exists, mid-run.
  std::string run = dir / "k";
  pid_t pid = fork();
  if (pid == 0) {
    std::string cmd = test::kiln_binary() + " " + train_args(run) +
                      " train.steps=200 train.checkpoint_every=20 >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), nullptr);
    _exit(127);
  }
  auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(run + "/checkpoints/step_00000020") &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
  // No temporary or partial checkpoint may be mistaken for a complete one.
  auto r = kiln(train_args(run) + " train.steps=200 train.checkpoint_every=20 --resume");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(losses(run), losses(dir / "a"));
}

TEST_F(TrainCli, TrainedModelEvaluatesGeneratesAndPlots) {
  auto t = kiln(train_args(dir / "run") + " train.steps=60");
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("train 60/60"), std::string::npos) << t.output;  // the progress line
  auto e = kiln("eval --model " + (dir / "run") + " --text " + (dir / "corpus.txt"));
  ASSERT_EQ(e.status, 0) << e.output;
  auto j = nlohmann::json::parse(e.output.substr(e.output.find('{')));
  // Learned: far below the uniform-byte loss ln(257) = 5.55.
  EXPECT_LT(j["loss"].get<double>(), 3.0);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(j["loss"].get<double>()),
              1e-3 * j["perplexity"].get<double>());
  auto g = kiln("generate --model " + (dir / "run") +
                " --prompt 'the cat' --max-new-tokens 20 --temperature 0");
  ASSERT_EQ(g.status, 0) << g.output;
  EXPECT_EQ(g.output.rfind("the cat", 0), 0u) << g.output;
  auto g2 = kiln("generate --model " + (dir / "run") +
                 " --prompt 'the cat' --max-new-tokens 20 --temperature 0");
  EXPECT_EQ(g.output, g2.output);  // greedy is deterministic
  auto s1 = kiln("generate --model " + (dir / "run") +
                 " --prompt 'a' --max-new-tokens 30 --seed 4 --top-k 5 --top-p 0.9");
  auto s2 = kiln("generate --model " + (dir / "run") +
                 " --prompt 'a' --max-new-tokens 30 --seed 4 --top-k 5 --top-p 0.9");
  EXPECT_EQ(s1.output, s2.output);  // a seed reproduces
  // kiln chat renders each turn with the model's chat template: guanaco's "### Human:" format
  // for a model without one, the template in tokenizer_config.json once the model has one.
  const std::string chat = "printf 'a\\nb\\n' | " + test::kiln_binary() + " chat --model " +
                           (dir / "run") + " --max-new-tokens 3 --temperature 0 --show-prompt";
  auto c1 = test::run_command(chat);
  ASSERT_EQ(c1.status, 0) << c1.output;
  EXPECT_NE(c1.output.find("[chat] template: kiln's default (guanaco)"), std::string::npos)
      << c1.output;
  EXPECT_NE(c1.output.find("[chat] prompt: ### Human: a ### Assistant:\n"), std::string::npos)
      << c1.output;
  EXPECT_NE(c1.output.find(" ### Human: b ### Assistant:\n"), std::string::npos) << c1.output;
  write_file_atomic(
      dir / "run" + "/checkpoints/step_00000060/tokenizer_config.json",
      R"({"eos_token": "<|endoftext|>", "chat_template": "{% for m in messages %})"
      R"(<{{ m.role }}>{{ m.content | trim }}{% endfor %}{% if add_generation_prompt %})"
      R"(<assistant>{% endif %}"})");
  auto c2 = test::run_command(chat + " --system ' Be brief. '");
  ASSERT_EQ(c2.status, 0) << c2.output;
  EXPECT_NE(c2.output.find("[chat] prompt: <system>Be brief.<user>a<assistant>\n"),
            std::string::npos)
      << c2.output;
  // The same model exported to GGUF generates the same greedy text (f32 exactly; q8_0 on this
  // tiny, well-separated model too), through the batched engine with quantized matrices.
  for (const char* type : {"f32", "q8_0"}) {
    const std::string gguf = dir / (std::string("m-") + type + ".gguf");
    auto x = kiln("export --model " + (dir / "run") + " --format gguf --type " + type +
                  " --output " + gguf);
    ASSERT_EQ(x.status, 0) << x.output;
    auto gg = kiln("generate --model " + gguf +
                   " --prompt 'the cat' --max-new-tokens 20 --temperature 0");
    ASSERT_EQ(gg.status, 0) << gg.output;
    // the GGUF carries the chat template (tokenizer.chat_template) for llama.cpp and kiln chat
    auto gc = test::run_command("printf 'a\\n' | " + test::kiln_binary() + " chat --model " + gguf +
                                " --max-new-tokens 2 --temperature 0 --show-prompt");
    ASSERT_EQ(gc.status, 0) << gc.output;
    EXPECT_NE(gc.output.find("[chat] prompt: <user>a<assistant>\n"), std::string::npos)
        << gc.output;
    if (std::string(type) == "f32") EXPECT_EQ(gg.output, g.output);
    EXPECT_EQ(gg.output.rfind("the cat", 0), 0u) << gg.output;
  }
  auto p = kiln("plot " + (dir / "run") + " --output " + (dir / "curves.svg"));
  ASSERT_EQ(p.status, 0) << p.output;
  EXPECT_NE(read_file(dir / "curves.svg").find("<svg"), std::string::npos);
  auto png = kiln("plot " + (dir / "run") + " --x tokens --output " + (dir / "curves.png"));
  ASSERT_EQ(png.status, 0) << png.output;
  EXPECT_EQ(read_file(dir / "curves.png").substr(1, 3), "PNG");
  auto bad = kiln("plot " + (dir / "run") + " --output " + (dir / "curves.gif"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find(".svg or .png"), std::string::npos) << bad.output;
  EXPECT_TRUE(fs::exists(dir / "run" + "/config.yaml"));
  EXPECT_TRUE(fs::exists(dir / "run" + "/checkpoints/step_00000060/tokenizer.json"));
}

TEST_F(TrainCli, BadInputFailsClearlyAndOverwritesNothing) {
  auto r = kiln(train_args(dir / "x") + " optim.lrr=1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown key 'optim.lrr'"), std::string::npos) << r.output;
  r = kiln(train_args(dir / "x") + " model.hidden_sise=3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("unknown key 'hidden_sise'"), std::string::npos) << r.output;
  r = kiln("train " + (dir / "tiny.yaml") + " run_dir=" + (dir / "x") +
           " data.train=[/no/such.txt]");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("/no/such.txt"), std::string::npos) << r.output;
  write_file_atomic(dir / "broken.yaml", "model: [unclosed\n");
  r = kiln("train " + (dir / "broken.yaml"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("not valid YAML"), std::string::npos) << r.output;
  r = kiln(train_args(dir / "x") + " --resume");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("no checkpoint"), std::string::npos) << r.output;

  // A corrupt checkpoint: an error naming the file; the good files stay as they were.
  ASSERT_EQ(kiln(train_args(dir / "c") + " train.steps=10").status, 0);
  std::string ck = dir / "c" + "/checkpoints/step_00000010";
  std::string before = read_file(ck + "/config.json");
  std::filesystem::resize_file(ck + "/model.safetensors", 1000);
  r = kiln("generate --model " + ck + " --prompt a");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  r = kiln(train_args(dir / "c") + " train.steps=20 --resume");
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(read_file(ck + "/config.json"), before);
  r = kiln("eval --model " + (dir / "nothing") + " --text " + (dir / "corpus.txt"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("neither a model directory"), std::string::npos) << r.output;
  r = kiln("generate --model " + ck + " --prompt a --top-p 0");
  EXPECT_NE(r.status, 0);
}

}  // namespace
}  // namespace kiln

// `kiln serve --lora NAME=DIR`: LoRA adapters served beside the base, picked by the request's
// `model` (as vLLM does). Requests of two adapters and of the base, in flight together, each give
// the greedy text of its merged model (`kiln generate --adapter`, which merges W + s B A); adapters
// load and unload at run time (/v1/load_lora_adapter, /v1/unload_lora_adapter) and are listed in
// /v1/models; bad adapters and names are refused with OpenAI-style errors, and a bad --lora stops
// the server at start.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/core/rng.h"
#include "kiln/model/lora.h"
#include "kiln/model/model_io.h"
#include "lora_test_util.h"
#include "serve_test_util.h"

namespace kiln {
namespace {

using json = nlohmann::json;
using test::http;
using test::HttpReply;

// A PEFT adapter over the test model with random B (PEFT's B = 0 would change nothing).
void write_adapter(const std::string& model_dir, const std::string& dir, int r, uint64_t seed) {
  auto base = load_model(model_dir);
  LoraConfig lc;
  lc.r = r;
  lc.alpha = float(2 * r);
  lc.target_modules = {"q_proj", "v_proj", "down_proj"};
  LoraWeights ad(*base, lc);
  test::init_with_random_b(ad, seed, 0.3f);
  save_lora_adapter(ad.adapter(), dir);
}

class ServeLora : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("kiln-serve-lora");
    test::make_model_dir(*dir_ / "tiny");
    write_adapter(*dir_ / "tiny", *dir_ / "a1", 4, 31);
    write_adapter(*dir_ / "tiny", *dir_ / "a2", 8, 41);
    write_adapter(*dir_ / "tiny", *dir_ / "a3", 2, 51);
    server_ = new test::ServerProcess(
        *dir_ / "tiny",
        "--served-model-name tiny --max-running 8 --allow-runtime-lora --lora a1=" +
            (*dir_ / "a1") + " --lora a2=" + (*dir_ / "a2"),
        *dir_ / "server.log");
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  static int port() { return server_->port(); }
  static HttpReply post(const std::string& path, const json& body) {
    return http(port(), "POST", path, body.dump());
  }
  static test::TempDir* dir_;
  static test::ServerProcess* server_;
};
test::TempDir* ServeLora::dir_ = nullptr;
test::ServerProcess* ServeLora::server_ = nullptr;

// What `kiln generate` continues `prompt` with, greedily, with the adapter merged (or none).
std::string merged_greedy(const std::string& model, const std::string& adapter,
                          const std::string& prompt, int n) {
  auto r = test::run_command(test::kiln_binary() + " generate --model " + model +
                             (adapter.empty() ? "" : " --adapter " + adapter) +
                             " --temperature 0 --max-new-tokens " + std::to_string(n) +
                             " --prompt '" + prompt + "' 2>/dev/null");
  EXPECT_EQ(r.status, 0) << r.output;
  // stderr comes along (run_command): the text follows the echoed prompt on the last line.
  const size_t nl = r.output.rfind("\n" + prompt);
  const size_t at = r.output.rfind(prompt, 0) == 0 && nl == std::string::npos ? 0 : nl + 1;
  std::string out = r.output.substr(std::min(r.output.size(), at + prompt.size()));
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST_F(ServeLora, ModelsListsTheAdaptersBesideTheBase) {
  HttpReply m = http(port(), "GET", "/v1/models");
  ASSERT_EQ(m.status, 200);
  const json data = json::parse(m.body)["data"];
  ASSERT_EQ(data.size(), 3u) << m.body;
  EXPECT_EQ(data[0]["id"], "tiny");
  EXPECT_EQ(data[1]["id"], "a1");
  EXPECT_EQ(data[1]["parent"], "tiny");
  EXPECT_EQ(data[1]["root"], *dir_ / "a1");
  EXPECT_EQ(data[2]["id"], "a2");
}

TEST_F(ServeLora, AdaptersAndTheBaseInOneBatchEachMatchTheirMergedModel) {
  const std::vector<std::pair<std::string, std::string>> reqs = {
      {"a1", "the cat sees"}, {"tiny", "the cat sees"}, {"a2", "a dog runs"},
      {"a2", "the cat sees"}, {"a1", "one two three"},  {"tiny", "a dog runs"}};
  std::vector<std::unique_ptr<test::OpenRequest>> open;
  for (const auto& [model, prompt] : reqs) {
    const std::string body =
        json{{"model", model}, {"prompt", prompt}, {"max_tokens", 20}, {"temperature", 0}}.dump();
    open.push_back(std::make_unique<test::OpenRequest>(
        port(), test::request_text("POST", "/v1/completions", body)));
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    open[i]->read_all();
    const HttpReply r = test::parse_reply(open[i]->received());
    ASSERT_EQ(r.status, 200) << r.body;
    const json j = json::parse(r.body);
    const auto& [model, prompt] = reqs[i];
    EXPECT_EQ(j["model"], model);
    const std::string adapter = model == "tiny" ? "" : *dir_ / model;
    EXPECT_EQ(j["choices"][0]["text"], merged_greedy(*dir_ / "tiny", adapter, prompt, 20))
        << model << ": " << prompt;
  }
  // The adapters do change the output (or the comparison above would prove nothing).
  EXPECT_NE(merged_greedy(*dir_ / "tiny", *dir_ / "a1", "the cat sees", 20),
            merged_greedy(*dir_ / "tiny", "", "the cat sees", 20));
}

TEST_F(ServeLora, AdaptersLoadAndUnloadAtRunTime) {
  const json ask = {
      {"model", "a3"}, {"prompt", "one two three"}, {"max_tokens", 12}, {"temperature", 0}};
  HttpReply r = post("/v1/completions", ask);
  EXPECT_EQ(r.status, 404) << r.body;
  EXPECT_NE(r.body.find("'a3' does not exist; this server serves 'tiny', 'a1', 'a2'"),
            std::string::npos)
      << r.body;
  r = post("/v1/load_lora_adapter", {{"lora_name", "a3"}, {"lora_path", *dir_ / "a3"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, "Success: LoRA adapter 'a3' added successfully.");
  r = post("/v1/completions", ask);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["choices"][0]["text"],
            merged_greedy(*dir_ / "tiny", *dir_ / "a3", "one two three", 12));
  EXPECT_EQ(json::parse(http(port(), "GET", "/v1/models").body)["data"].size(), 4u);
  r = post("/v1/unload_lora_adapter", {{"lora_name", "a3"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(post("/v1/completions", ask).status, 404);
  EXPECT_EQ(post("/v1/unload_lora_adapter", {{"lora_name", "a3"}}).status, 404);
  EXPECT_EQ(json::parse(http(port(), "GET", "/v1/models").body)["data"].size(), 3u);
}

TEST_F(ServeLora, BadAdaptersAndNamesAreRefused) {
  HttpReply r = post("/v1/load_lora_adapter", {{"lora_name", "x"}, {"lora_path", *dir_ / "nope"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "lora_path") << r.body;
  r = post("/v1/load_lora_adapter", {{"lora_name", "a1"}, {"lora_path", *dir_ / "a2"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("'a1' is loaded already"), std::string::npos) << r.body;
  r = post("/v1/load_lora_adapter", {{"lora_name", "tiny"}, {"lora_path", *dir_ / "a3"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("the base model's name"), std::string::npos) << r.body;
  r = post("/v1/load_lora_adapter", {{"lora_path", *dir_ / "a3"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["error"]["param"], "lora_name") << r.body;
  // An adapter of another base: a model whose hidden size differs.
  ModelConfig c = load_model(*dir_ / "tiny")->config();
  c.hidden = 64;
  c.head_dim = 16;
  Model wide(c);
  wide.init_weights(2);
  save_model(wide, *dir_ / "wide");
  write_adapter(*dir_ / "wide", *dir_ / "wide-lora", 4, 7);
  r = post("/v1/load_lora_adapter", {{"lora_name", "w"}, {"lora_path", *dir_ / "wide-lora"}});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("made for another model or rank"), std::string::npos) << r.body;
}

TEST(ServeLoraStart, RunTimeLoadingIsOffUnlessAllowed) {
  test::TempDir dir("kiln-serve-lora-off");
  test::make_model_dir(dir / "tiny");
  write_adapter(dir / "tiny", dir / "a", 2, 3);
  test::ServerProcess s(dir / "tiny", "--lora a=" + (dir / "a"), dir / "server.log");
  ASSERT_TRUE(s.ready()) << s.log();
  HttpReply r = http(s.port(), "POST", "/v1/load_lora_adapter",
                     json{{"lora_name", "b"}, {"lora_path", dir / "a"}}.dump());
  EXPECT_EQ(r.status, 403);
  EXPECT_NE(r.body.find("--allow-runtime-lora"), std::string::npos) << r.body;
  EXPECT_EQ(
      http(s.port(), "POST", "/v1/unload_lora_adapter", json{{"lora_name", "a"}}.dump()).status,
      403);
  EXPECT_EQ(json::parse(http(s.port(), "GET", "/v1/models").body)["data"].size(), 2u);
}

TEST(ServeLoraStart, ABadLoraStopsTheServer) {
  test::TempDir dir("kiln-serve-lora-bad");
  test::make_model_dir(dir / "tiny");
  test::ServerProcess s(dir / "tiny", "--lora x=" + (dir / "missing"), dir / "server.log");
  EXPECT_FALSE(s.ready());
  EXPECT_NE(s.stop(), 0);
  EXPECT_NE(s.log().find("--lora x="), std::string::npos) << s.log();
}

}  // namespace
}  // namespace kiln

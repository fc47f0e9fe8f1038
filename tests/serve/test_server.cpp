// `kiln serve` end to end, as a subprocess on a free port over a tiny random-weight Llama:
// the routes, greedy output equal to `kiln generate`'s, streaming in OpenAI's chunk format,
// every error path answered with its status and an OpenAI-style error object (never a crash),
// disconnects (one by one, and a seeded storm of 200 over a cache small enough to preempt)
// freeing the engine, 1,000 concurrent streams completing on a bounded number of server threads,
// and SIGTERM draining to exit 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>

#include <sys/resource.h>

#include "serve_test_util.h"

namespace kiln {
namespace {

using json = nlohmann::json;
using test::http;
using test::HttpReply;

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("kiln-serve");
    test::make_model_dir(*dir_ / "tiny");
    server_ = new test::ServerProcess(*dir_ / "tiny", "--served-model-name tiny --max-running 8",
                                      *dir_ / "server.log");
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  static int port() { return server_->port(); }
  static json post(const std::string& path, const json& body, int expect = 200) {
    HttpReply r = http(port(), "POST", path, body.dump());
    EXPECT_EQ(r.status, expect) << r.body;
    return json::parse(r.body);
  }
  static std::string model_dir() { return *dir_ / "tiny"; }

  static test::TempDir* dir_;
  static test::ServerProcess* server_;
};
test::TempDir* Serve::dir_ = nullptr;
test::ServerProcess* Serve::server_ = nullptr;

// The text `kiln generate` continues `prompt` with, greedily.
std::string generate_greedy(const std::string& model, const std::string& prompt, int n) {
  auto r = test::run_command(test::kiln_binary() + " generate --model " + model +
                             " --temperature 0 --max-new-tokens " + std::to_string(n) +
                             " --prompt '" + prompt + "' 2>/dev/null");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.compare(0, prompt.size(), prompt), 0);
  std::string out = r.output.substr(prompt.size());
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST_F(Serve, HealthAndModels) {
  HttpReply h = http(port(), "GET", "/health");
  EXPECT_EQ(h.status, 200);
  HttpReply m = http(port(), "GET", "/v1/models");
  ASSERT_EQ(m.status, 200);
  json j = json::parse(m.body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
}

TEST_F(Serve, GreedyCompletionEqualsKilnGenerate) {
  const std::string prompt = "the cat sees";
  // Alone, and in a batch with 7 other running streams (sampled, other prompts).
  json alone =
      post("/v1/completions", {{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}});
  std::vector<std::unique_ptr<test::OpenRequest>> others;
  for (int i = 0; i < 7; ++i) {
    const std::string body = json{
        {"prompt", "other prompt " + std::to_string(i)},
        {"max_tokens", 400},
        {"seed", i},
        {"stream", true}}.dump();
    others.push_back(std::make_unique<test::OpenRequest>(
        port(), test::request_text("POST", "/v1/completions", body)));
    ASSERT_TRUE(others.back()->read_until("data: "));
  }
  json j = post("/v1/completions",
                {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}});
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  ASSERT_EQ(j["choices"].size(), 1u);
  const std::string want = generate_greedy(model_dir(), prompt, 24);
  EXPECT_EQ(j["choices"][0]["text"], want);
  EXPECT_EQ(alone["choices"][0]["text"], want);
  EXPECT_EQ(j["usage"]["prompt_tokens"], int(prompt.size()));  // byte-level: one token a byte
  const int completion = j["usage"]["completion_tokens"];
  EXPECT_EQ(j["usage"]["total_tokens"], int(prompt.size()) + completion);
  EXPECT_EQ(completion, 24);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
}

TEST_F(Serve, ChatCompletion) {
  json j = post(
      "/v1/chat/completions",
      {{"messages",
        {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "hi"}}}},
       {"max_tokens", 8},
       {"temperature", 0},
       {"ignore_eos", true}});
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  // The rendered prompt: "be brief\n### Human: hi ### Assistant:" (guanaco format).
  EXPECT_EQ(j["usage"]["prompt_tokens"], 37);
}

// Splits an SSE body into its data payloads.
std::vector<std::string> sse_data(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while (true) {
    const size_t at = body.find("data: ", p);
    if (at == std::string::npos) break;
    const size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    p = end + 2;
  }
  return out;
}

TEST_F(Serve, StreamedChatEqualsWhole) {
  json req = {{"messages", {{{"role", "user"}, {"content", "a river"}}}},
              {"max_tokens", 20},
              {"temperature", 0},
              {"n", 2},
              {"ignore_eos", true}};
  json whole = post("/v1/chat/completions", req);
  req["stream"] = true;
  req["stream_options"] = {{"include_usage", true}};
  HttpReply r = http(port(), "POST", "/v1/chat/completions", req.dump());
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  std::vector<std::string> events = sse_data(r.body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text[2];
  bool role[2] = {false, false};
  int finished = 0;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json c = json::parse(events[i]);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_TRUE(c.contains("usage"));
    if (c["choices"].empty()) {
      usage = c["usage"];
      EXPECT_EQ(i + 2, events.size()) << "the usage chunk comes last";
      continue;
    }
    const json& ch = c["choices"][0];
    const int k = ch["index"];
    if (ch["delta"].contains("role")) {
      EXPECT_FALSE(role[k]);
      EXPECT_TRUE(text[k].empty());
      role[k] = true;
    }
    EXPECT_TRUE(role[k]) << "the role comes in the first delta";
    if (ch["delta"].contains("content")) text[k] += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) {
      EXPECT_EQ(ch["finish_reason"], "length");
      ++finished;
    }
  }
  EXPECT_EQ(finished, 2);
  for (int k = 0; k < 2; ++k) EXPECT_EQ(text[k], whole["choices"][k]["message"]["content"]);
  for (const char* k : {"prompt_tokens", "completion_tokens", "total_tokens"})
    EXPECT_EQ(usage[k], whole["usage"][k]) << k;
  // The second request found the first's prompt in the prefix cache (2 full blocks of 16).
  EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"], 32);
}

// Chat logprobs in OpenAI's shape, whole and streamed alike: one entry per generated token,
// whose tokens spell the content, the greedy pick the most likely, top_logprobs k sorted.
TEST_F(Serve, ChatLogprobs) {
  json req = {{"messages", {{{"role", "user"}, {"content", "a river"}}}},
              {"max_tokens", 10},
              {"temperature", 0},
              {"logprobs", true},
              {"top_logprobs", 3},
              {"ignore_eos", true}};
  json whole = post("/v1/chat/completions", req);
  const json& ch = whole["choices"][0];
  const json& content = ch["logprobs"]["content"];
  ASSERT_EQ(content.size(), 10u) << whole.dump();
  EXPECT_TRUE(ch["logprobs"]["refusal"].is_null());
  std::string text;
  for (const json& e : content) {
    const std::string tok = e["token"];
    text += tok;
    std::string from_bytes;
    for (int b : e["bytes"]) from_bytes += char(b);
    EXPECT_EQ(from_bytes, tok);
    EXPECT_LE(e["logprob"].get<double>(), 0.0);
    ASSERT_EQ(e["top_logprobs"].size(), 3u);
    EXPECT_EQ(e["top_logprobs"][0]["token"], tok) << "greedy picks the most likely";
    EXPECT_DOUBLE_EQ(e["top_logprobs"][0]["logprob"].get<double>(), e["logprob"].get<double>());
    for (int k = 0; k + 1 < 3; ++k)
      EXPECT_GE(e["top_logprobs"][k]["logprob"].get<double>(),
                e["top_logprobs"][k + 1]["logprob"].get<double>());
  }
  EXPECT_EQ(text, ch["message"]["content"]);
  // Without top_logprobs: the sampled token's only.
  req.erase("top_logprobs");
  json bare = post("/v1/chat/completions", req);
  EXPECT_TRUE(bare["choices"][0]["logprobs"]["content"][0]["top_logprobs"].empty());
  // Streamed: the same entries spread over the chunks, each with the text it came with.
  req["top_logprobs"] = 3;
  req["stream"] = true;
  HttpReply r = http(port(), "POST", "/v1/chat/completions", req.dump());
  ASSERT_EQ(r.status, 200);
  json streamed = json::array();
  for (const std::string& d : sse_data(r.body)) {
    if (d == "[DONE]") break;
    const json c = json::parse(d)["choices"][0];
    if (c["logprobs"].is_null()) continue;
    for (const json& e : c["logprobs"]["content"]) streamed.push_back(e);
  }
  // The second request reuses the first's prompt blocks (prefix cache): the logits may differ
  // in the last bits (another GEMM blocking), so log probs compare to 1e-4.
  ASSERT_EQ(streamed.size(), content.size());
  for (size_t i = 0; i < content.size(); ++i) {
    EXPECT_EQ(streamed[i]["token"], content[i]["token"]);
    EXPECT_EQ(streamed[i]["bytes"], content[i]["bytes"]);
    EXPECT_NEAR(streamed[i]["logprob"].get<double>(), content[i]["logprob"].get<double>(), 1e-4);
    ASSERT_EQ(streamed[i]["top_logprobs"].size(), 3u);
  }
  // Off: null.
  req.erase("stream");
  req["logprobs"] = false;
  req.erase("top_logprobs");
  EXPECT_TRUE(post("/v1/chat/completions", req)["choices"][0]["logprobs"].is_null());
}

// Completions logprobs in the legacy shape: tokens, token_logprobs, top_logprobs (k most likely
// plus the sampled token), text_offset; streamed chunks continue the offsets.
TEST_F(Serve, CompletionLogprobs) {
  json req = {
      {"prompt", "the cat"}, {"max_tokens", 8}, {"temperature", 1}, {"seed", 3}, {"logprobs", 2}};
  json whole = post("/v1/completions", req);
  const json& lp = whole["choices"][0]["logprobs"];
  const std::string text = whole["choices"][0]["text"];
  ASSERT_EQ(lp["tokens"].size(), 8u) << whole.dump();
  ASSERT_EQ(lp["token_logprobs"].size(), 8u);
  ASSERT_EQ(lp["top_logprobs"].size(), 8u);
  ASSERT_EQ(lp["text_offset"].size(), 8u);
  std::string joined;
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(lp["text_offset"][i], joined.size());
    const std::string tok = lp["tokens"][i];
    joined += tok;
    const json& top = lp["top_logprobs"][i];
    EXPECT_GE(top.size(), 2u);
    EXPECT_LE(top.size(), 3u);
    EXPECT_EQ(top[tok], lp["token_logprobs"][i]);
  }
  EXPECT_EQ(joined, text);
  req["stream"] = true;
  HttpReply r = http(port(), "POST", "/v1/completions", req.dump());
  ASSERT_EQ(r.status, 200);
  json tokens = json::array(), offsets = json::array();
  for (const std::string& d : sse_data(r.body)) {
    if (d == "[DONE]") break;
    const json c = json::parse(d)["choices"][0];
    if (c["logprobs"].is_null()) continue;
    for (const json& t : c["logprobs"]["tokens"]) tokens.push_back(t);
    for (const json& o : c["logprobs"]["text_offset"]) offsets.push_back(o);
  }
  EXPECT_EQ(tokens, lp["tokens"]);
  EXPECT_EQ(offsets, lp["text_offset"]);
}

// The schema of the response_format oracle, and its validator, written apart from the grammar.
const char* kAnswerSchema = R"({"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "kind": {"enum": ["cat", "dog", 7, null]},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "ok": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
    "pos": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"]}},
  "required": ["name", "kind", "tags", "pos"]})";

std::string check_answer(const json& v) {
  auto short_string = [](const json& x, size_t most) {
    if (!x.is_string()) return false;
    size_t chars = 0;
    for (unsigned char ch : x.get<std::string>()) chars += (ch & 0xC0) != 0x80;
    return chars <= most;
  };
  if (!v.is_object()) return "not an object";
  const std::set<std::string> known = {"name", "kind", "age", "score", "ok", "tags", "pos"};
  for (auto it = v.begin(); it != v.end(); ++it)
    if (!known.count(it.key())) return "unknown key " + it.key();
  for (const char* k : {"name", "kind", "tags", "pos"})
    if (!v.contains(k)) return std::string("missing required ") + k;
  if (!short_string(v["name"], 8)) return "name";
  const json& kind = v["kind"];
  if (!(kind == "cat" || kind == "dog" || kind == 7 || kind.is_null())) return "kind";
  if (v.contains("age") && !v["age"].is_number_integer()) return "age";
  if (v.contains("score") && !v["score"].is_number()) return "score";
  if (v.contains("ok") && !v["ok"].is_boolean()) return "ok";
  if (!v["tags"].is_array() || v["tags"].size() > 3) return "tags";
  for (const json& t : v["tags"])
    if (!short_string(t, 4)) return "tags[]";
  const json& pos = v["pos"];
  if (!pos.is_object() || pos.size() != 2 || !pos.contains("x") || !pos.contains("y") ||
      !pos["x"].is_number() || !pos["y"].is_number())
    return "pos";
  return "";
}

// response_format json_schema: 50 answers sampled at temperature 1 from the random-weight model
// all parse and validate; each ends by itself (stop) once the value closes. A max_tokens that
// comes first ends it with length (a prefix, as OpenAI does). json_object: an object.
TEST_F(Serve, ResponseFormatJsonSchemaAlwaysValidates) {
  json rf = {{"type", "json_schema"},
             {"json_schema", {{"name", "answer"}, {"schema", json::parse(kAnswerSchema)}}}};
  int answers = 0;
  for (int r = 0; r < 10; ++r) {
    json j = post(
        "/v1/chat/completions",
        {{"messages", {{{"role", "user"}, {"content", "describe a pet " + std::to_string(r)}}}},
         {"response_format", rf},
         {"temperature", 1},
         {"seed", r},
         {"n", 5},
         {"max_tokens", 400}});
    ASSERT_EQ(j["choices"].size(), 5u) << j.dump();
    for (const json& c : j["choices"]) {
      const std::string text = c["message"]["content"];
      SCOPED_TRACE(text);
      EXPECT_EQ(c["finish_reason"], "stop");
      json v = json::parse(text, nullptr, false);
      ASSERT_FALSE(v.is_discarded()) << "does not parse";
      EXPECT_EQ(check_answer(v), "");
      ++answers;
    }
  }
  EXPECT_EQ(answers, 50);
  // Cut short: length, a prefix.
  json cut = post("/v1/completions", {{"prompt", "x"}, {"response_format", rf}, {"max_tokens", 6}});
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(cut["choices"][0]["text"].get<std::string>().size(), 6u);
  EXPECT_EQ(cut["choices"][0]["text"].get<std::string>()[0], '{');
  // json_object: any object, streamed.
  json req = {{"prompt", "y"},     {"response_format", {{"type", "json_object"}}},
              {"max_tokens", 300}, {"temperature", 0.7},
              {"seed", 5},         {"stream", true}};
  HttpReply st = http(port(), "POST", "/v1/completions", req.dump());
  ASSERT_EQ(st.status, 200);
  std::string text, finish;
  for (const std::string& d : sse_data(st.body)) {
    if (d == "[DONE]") break;
    const json c = json::parse(d)["choices"][0];
    text += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  if (finish == "stop") {
    json v = json::parse(text, nullptr, false);
    EXPECT_TRUE(v.is_object()) << text;
  } else {
    EXPECT_EQ(finish, "length");
  }
  // Outside the subset: a 400 naming the field.
  json bad = rf;
  bad["json_schema"]["schema"] = {{"type", "string"}, {"pattern", "a+"}};
  json e =
      post("/v1/chat/completions",
           {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"response_format", bad}}, 400);
  EXPECT_EQ(e["error"]["param"], "response_format.json_schema.schema");
}

// The official OpenAI client (npm openai@6), unchanged, against the server.
TEST_F(Serve, OfficialOpenAIClient) {
  const std::string root = test::source_dir();
  if (!file_exists(root + "/data/serve_refs/node_modules/openai/package.json")) {
    FAIL() << "the OpenAI client is not installed: run scripts/fetch_serve_refs.sh "
              "(scripts/setup.sh does)";
  }
  auto r = test::run_command("node " + root + "/tests/serve/openai_client.mjs http://127.0.0.1:" +
                             std::to_string(port()) + "/v1 tiny");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("ALL OK"), std::string::npos) << r.output;
}

// Every malformed request gets its status and an OpenAI error object naming the field.
TEST_F(Serve, ErrorsAreOpenAIStyle) {
  struct Case {
    std::string path, body;
    int status;
    std::string param;  // "" = null
  };
  const std::string c = "/v1/completions", ch = "/v1/chat/completions";
  const Case cases[] = {
      {c, "{not json", 400, ""},
      {c, "[1, 2]", 400, ""},
      {c, std::string("{\"prompt\": \"a\xff\xfe b\"}"), 400, ""},
      {c, "{}", 400, "prompt"},
      {c, "{\"prompt\": 5}", 400, "prompt"},
      {c, "{\"prompt\": []}", 400, "prompt"},
      {c, "{\"prompt\": [1, 99999]}", 400, "prompt[1]"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": -1}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": 0}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": 1e300}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": 99999999999999999999999}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": \"10\"}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"max_tokens\": 512}", 400, "max_tokens"},
      {c, "{\"prompt\": \"a\", \"temperature\": 3}", 400, "temperature"},
      {c, "{\"prompt\": \"a\", \"temperature\": true}", 400, "temperature"},
      {c, "{\"prompt\": \"a\", \"top_p\": -0.5}", 400, "top_p"},
      {c, "{\"prompt\": \"a\", \"n\": 1000}", 400, "n"},
      {c, "{\"prompt\": \"a\", \"stop\": 7}", 400, "stop"},
      {c, "{\"prompt\": \"a\", \"stop\": [\"x\", 1]}", 400, "stop[1]"},
      {c, "{\"prompt\": \"a\", \"logit_bias\": {\"abc\": 1}}", 400, "logit_bias.abc"},
      {c, "{\"prompt\": \"a\", \"logit_bias\": {\"5\": 1000}}", 400, "logit_bias.5"},
      {c, "{\"prompt\": \"a\", \"stream\": \"yes\"}", 400, "stream"},
      {c, "{\"prompt\": \"a\", \"logprobs\": 21}", 400, "logprobs"},
      {c, "{\"prompt\": \"a\", \"logprobs\": true}", 400, "logprobs"},
      {ch, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}", 400,
       "top_logprobs"},
      {c, "{\"prompt\": \"a\", \"model\": \"gpt-9\"}", 404, "model"},
      {c, "{\"prompt\": \"" + std::string(600, 'x') + "\"}", 400, "prompt"},
      {ch, "{\"messages\": \"hi\"}", 400, "messages"},
      {ch, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}", 400, "messages[0].role"},
      {ch, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", 400, "messages[0].content"},
      {ch, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages[0].content"},
      {"/v1/nothing", "{}", 404, ""},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.path + " " + k.body.substr(0, 80));
    HttpReply r = http(port(), "POST", k.path, k.body);
    EXPECT_EQ(r.status, k.status) << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    ASSERT_TRUE(j["error"].is_object()) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_TRUE(j["error"]["type"].is_string());
    EXPECT_EQ(j["error"]["param"], k.param.empty() ? json(nullptr) : json(k.param)) << r.body;
    EXPECT_TRUE(j["error"].contains("code"));
  }
  // A body over the limit: 413; a wrong method: 405. The server still answers afterwards.
  HttpReply big = http(port(), "POST", c, "{\"prompt\": \"" + std::string(9 << 20, 'a') + "\"}");
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(http(port(), "GET", c).status, 405);
  EXPECT_EQ(http(port(), "GET", "/health").status, 200);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// A second server with an API key, 4 slots and a queue of 2, over a model with a long context
// (4000-token streams are still running when the test drops them).
class ServeLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_model_dir(dir_ / "long", 4096);
    write_file_atomic(dir_ / "key", "sesame\n");
    server_ = std::make_unique<test::ServerProcess>(
        dir_ / "long", "--max-running 4 --max-queue 2 --api-key-file " + (dir_ / "key"),
        dir_ / "server.log");
    ASSERT_TRUE(server_->ready()) << server_->log();
  }
  int port() const { return server_->port(); }
  std::string metrics() { return http(port(), "GET", "/metrics", "", kAuth).body; }
  static std::string stream_request(int max_tokens) {
    const std::string body = json{
        {"prompt", "the cat"},
        {"max_tokens", max_tokens},
        {"ignore_eos", true},
        {"stream", true}}.dump();
    return test::request_text("POST", "/v1/completions", body, kAuth);
  }

  static constexpr const char* kAuth = "Authorization: Bearer sesame\r\n";
  test::TempDir dir_{"kiln-serve-limits"};
  std::unique_ptr<test::ServerProcess> server_;
};

TEST_F(ServeLimits, ApiKey) {
  EXPECT_EQ(http(port(), "GET", "/health").status, 200);  // needs no key
  for (const std::string& auth : {std::string(""), std::string("Authorization: Bearer sesamE\r\n"),
                                  std::string("Authorization: Bearer sesame2\r\n")}) {
    HttpReply r = http(port(), "GET", "/v1/models", "", auth);
    EXPECT_EQ(r.status, 401) << auth;
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "invalid_api_key");
  }
  EXPECT_EQ(http(port(), "GET", "/v1/models", "", kAuth).status, 200);
}

// Four streams fill the slots, two more wait, the seventh gets 429 + Retry-After. Dropping every
// connection removes all six from the engine: nothing runs or waits, every KV block is free, and
// the server still answers.
TEST_F(ServeLimits, BackpressureAndDisconnects) {
  std::vector<std::unique_ptr<test::OpenRequest>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.push_back(std::make_unique<test::OpenRequest>(port(), stream_request(4000)));
    ASSERT_TRUE(streams.back()->read_until("data: ", 2)) << streams.back()->received();
  }
  for (int i = 0; i < 2; ++i) {  // queued: the response starts when they are submitted
    streams.push_back(std::make_unique<test::OpenRequest>(port(), stream_request(4000)));
    ASSERT_TRUE(streams.back()->read_until("\r\n\r\n")) << streams.back()->received();
    ASSERT_EQ(streams.back()->received().rfind("HTTP/1.1 200 ", 0), 0u)
        << streams.back()->received();
  }
  HttpReply full = test::http_raw(port(), stream_request(10));
  EXPECT_EQ(full.status, 429) << full.body;
  EXPECT_EQ(full.headers["retry-after"], "1");
  EXPECT_EQ(json::parse(full.body)["error"]["type"], "rate_limit_error");
  std::string m = metrics();
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 4) << m;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_waiting{"), 2) << m;
  EXPECT_GT(test::metric(m, "kiln:kv_cache_usage_perc{"), 0) << m;

  for (auto& s : streams) s->drop();
  // The engine loop notices the disconnects before its next step; poll its gauges (bounded).
  for (int i = 0; i < 1000; ++i) {
    m = metrics();
    if (test::metric(m, "kiln:num_requests_running{") == 0 &&
        test::metric(m, "kiln:num_requests_waiting{") == 0 &&
        test::metric(m, "kiln:kv_cache_usage_perc{") == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_waiting{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:kv_cache_usage_perc{"), 0) << m;
  EXPECT_EQ(
      test::metric(m, "kiln:request_success_total{model_name=\"long\",finished_reason=\"abort\"}"),
      6)
      << m;
  HttpReply after = http(port(), "POST", "/v1/completions",
                         json{{"prompt", "a"}, {"max_tokens", 3}}.dump(), kAuth);
  EXPECT_EQ(after.status, 200) << after.body;
  EXPECT_NE(server_->log().find("client disconnected"), std::string::npos);
}

// SIGTERM while a stream runs: the stream still completes ([DONE]), then the server exits 0.
TEST_F(ServeLimits, SigtermDrainsThenExitsZero) {
  test::OpenRequest s(port(), stream_request(300));
  ASSERT_TRUE(s.read_until("data: ", 2));
  EXPECT_EQ(server_->stop(), 0) << server_->log();
  s.read_all();
  EXPECT_NE(s.received().find("\"finish_reason\":\"length\""), std::string::npos);
  EXPECT_NE(s.received().find("data: [DONE]\n\n"), std::string::npos) << s.received();
  EXPECT_NE(server_->log().find("drained"), std::string::npos) << server_->log();
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// A server whose KV cache holds far less than its 16 slots could use (so preemption happens),
// with a queue deep enough for a storm.
class ServeStorm : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_model_dir(dir_ / "tiny");
    server_ = std::make_unique<test::ServerProcess>(
        dir_ / "tiny", "--max-running 16 --max-queue 256 --kv-blocks 24", dir_ / "server.log");
    ASSERT_TRUE(server_->ready()) << server_->log();
  }
  int port() const { return server_->port(); }
  std::string metrics() { return http(port(), "GET", "/metrics").body; }

  test::TempDir dir_{"kiln-serve-storm"};
  std::unique_ptr<test::ServerProcess> server_;
};

// 16 greedy requests at once, each growing to 14 of the cache's 24 blocks: the server preempts
// (kiln:num_preemptions_total > 0) and still answers each exactly as it does alone.
TEST_F(ServeStorm, PreemptedGreedyAnswersEqualSoloOnes) {
  auto body = [](int i) {
    std::string prompt = "the cat";
    for (int k = 0; k < i % 4; ++k) prompt += " sat";
    return json{{"prompt", prompt}, {"max_tokens", 200}, {"ignore_eos", true}, {"temperature", 0}}
        .dump();
  };
  const int N = 16;
  std::vector<std::unique_ptr<test::OpenRequest>> reqs;
  for (int i = 0; i < N; ++i)
    reqs.push_back(std::make_unique<test::OpenRequest>(
        port(), test::request_text("POST", "/v1/completions", body(i))));
  for (int i = 0; i < N; ++i) {
    reqs[i]->read_all();
    HttpReply got = test::parse_reply(reqs[i]->received());
    ASSERT_EQ(got.status, 200) << got.body;
    HttpReply alone = http(port(), "POST", "/v1/completions", body(i));
    ASSERT_EQ(alone.status, 200) << alone.body;
    EXPECT_EQ(json::parse(got.body)["choices"][0]["text"],
              json::parse(alone.body)["choices"][0]["text"])
        << "request " << i;
    EXPECT_EQ(json::parse(got.body)["usage"]["completion_tokens"], 200);
  }
  EXPECT_GT(test::metric(metrics(), "kiln:num_preemptions_total{"), 0);
}

// 200 streams opened at once and dropped at seeded random points (half-sent request, before a
// byte is read, after the headers, after 1..9 events), in a random order. Afterwards nothing runs
// or waits, every KV block is free, and the server still answers.
TEST_F(ServeStorm, DisconnectStormLeavesNothingBehind) {
  const int N = 200;
  std::mt19937 rng(14);
  std::vector<std::unique_ptr<test::OpenRequest>> streams;
  std::vector<int> drop_at(N);
  for (int i = 0; i < N; ++i) {
    std::string prompt = "the cat";
    for (int k = 0; k < i % 5; ++k) prompt += " sat on the mat";
    const std::string raw = test::request_text(
        "POST", "/v1/completions",
        json{{"prompt", prompt}, {"max_tokens", 48}, {"ignore_eos", true}, {"stream", true}}
            .dump());
    drop_at[i] = int(rng() % 12) - 2;  // -2 half-sent, -1 unread, 0 headers, k events
    streams.push_back(std::make_unique<test::OpenRequest>(
        port(), drop_at[i] == -2 ? raw.substr(0, raw.size() / 2) : raw));
  }
  std::vector<int> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  for (int i : order) {
    if (drop_at[i] == 0) streams[i]->read_until("\r\n\r\n");
    if (drop_at[i] > 0) streams[i]->read_until("data: ", drop_at[i]);
    streams[i]->drop();
  }
  // The engine loop notices the disconnects before its next step; poll its gauges (bounded).
  std::string m;
  for (int i = 0; i < 2000; ++i) {
    m = metrics();
    if (test::metric(m, "kiln:num_requests_running{") == 0 &&
        test::metric(m, "kiln:num_requests_waiting{") == 0 &&
        test::metric(m, "kiln:kv_cache_usage_perc{") == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_waiting{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:kv_cache_usage_perc{"), 0) << m;
  EXPECT_GE(test::metric(m, "kiln:num_preemptions_total{"), 0) << m;
  HttpReply after =
      http(port(), "POST", "/v1/completions", json{{"prompt", "a"}, {"max_tokens", 3}}.dump());
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(json::parse(after.body)["usage"]["completion_tokens"], 3);
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Threads of a running process, from /proc/PID/status ("Threads:\tN"); -1 when unreadable.
int thread_count(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return -1;
}

// A server of its own (no other test's requests in flight), so the stage counters move by
// exactly this test's requests; its body limit lets a 20 MB prompt through.
class ServeStages : public ::testing::Test {
 protected:
  void SetUp() override {
    test::make_model_dir(dir_ / "tiny");
    server_ = std::make_unique<test::ServerProcess>(
        dir_ / "tiny", "--max-running 4 --max-body-bytes 33554432", dir_ / "server.log");
    ASSERT_TRUE(server_->ready()) << server_->log();
  }
  int port() const { return server_->port(); }
  std::string metrics() { return http(port(), "GET", "/metrics").body; }
  json post(const std::string& path, const json& body) {
    HttpReply r = http(port(), "POST", path, body.dump());
    EXPECT_EQ(r.status, 200) << r.body;
    return json::parse(r.body);
  }

  test::TempDir dir_{"kiln-serve-stages"};
  std::unique_ptr<test::ServerProcess> server_;
};

double stage(const std::string& m, const std::string& name, const std::string& stage) {
  return test::metric(m, name + "{model_name=\"tiny\",stage=\"" + stage + "\"}");
}

// Every request passes the four stages, each counted once per request (http also counts the
// /metrics request before), with time spent in each; the engine stepped.
TEST_F(ServeStages, EachStageCountsEveryRequest) {
  const std::string m0 = metrics();
  post("/v1/completions", {{"prompt", "the cat"}, {"max_tokens", 5}});
  post("/v1/completions", {{"prompt", "a dog"}, {"max_tokens", 3}, {"stop", {"zz"}}});
  HttpReply r = http(port(), "POST", "/v1/chat/completions",
                     json{{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                          {"max_tokens", 4},
                          {"stream", true}}
                         .dump());
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);
  const std::string m1 = metrics();
  for (const char* st : {"http", "tokenize", "engine", "detokenize"}) {
    const double n0 = stage(m0, "kiln:stage_requests_total", st);
    const double n1 = stage(m1, "kiln:stage_requests_total", st);
    ASSERT_GE(n0, 0) << st << "\n" << m0;
    EXPECT_EQ(n1 - n0, std::string(st) == "http" ? 4 : 3) << st << "\n" << m1;
    EXPECT_GT(stage(m1, "kiln:stage_seconds_total", st), 0) << st << "\n" << m1;
  }
  EXPECT_GE(test::metric(m1, "kiln:engine_steps_total{"), 5) << m1;
  EXPECT_EQ(test::metric(m1, "kiln:tokenized_bytes_total{") -
                test::metric(m0, "kiln:tokenized_bytes_total{"),
            7 + 5 + 28)  // byte-level: the prompts, and the chat rendered with guanaco
      << m1;
}

// A stop string applied after the engine: the text cut exactly before it, finish_reason stop,
// completion tokens counted up to the one that completed it, streamed alike, for each of n = 2
// samples; the request leaves the engine (every KV block free). One that never occurs changes
// nothing.
TEST_F(ServeStages, StopStringsCutAfterTheEngine) {
  json req = {{"prompt", "the cat sees"}, {"max_tokens", 40}, {"temperature", 0}, {"n", 2}};
  json full = post("/v1/completions", req);
  const std::string text = full["choices"][0]["text"];
  ASSERT_EQ(text.size(), 40u);  // byte-level, ASCII: a token a byte
  const std::string stop = text.substr(12, 3);
  const size_t at = text.find(stop);
  req["stop"] = {stop, "\x01never"};
  req["logprobs"] = 1;
  json cut = post("/v1/completions", req);
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(cut["choices"][k]["text"], text.substr(0, at));
    EXPECT_EQ(cut["choices"][k]["finish_reason"], "stop");
    EXPECT_EQ(cut["choices"][k]["logprobs"]["tokens"].size(), at + 3);
  }
  EXPECT_EQ(cut["usage"]["completion_tokens"], 2 * int(at + 3));
  req["stream"] = true;
  HttpReply r = http(port(), "POST", "/v1/completions", req.dump());
  ASSERT_EQ(r.status, 200);
  std::string streamed[2];
  int stops = 0;
  for (const std::string& e : sse_data(r.body)) {
    if (e == "[DONE]") continue;
    const json chunk = json::parse(e);
    const json& ch = chunk["choices"][0];
    streamed[ch["index"].get<int>()] += ch["text"].get<std::string>();
    stops += ch["finish_reason"] == "stop";
  }
  EXPECT_EQ(stops, 2);
  for (int k = 0; k < 2; ++k) EXPECT_EQ(streamed[k], text.substr(0, at));
  req.erase("stream");
  req.erase("logprobs");
  req["stop"] = {"\x01never"};
  json same = post("/v1/completions", req);
  EXPECT_EQ(same["choices"][1]["text"], text);
  EXPECT_EQ(same["choices"][1]["finish_reason"], "length");
  std::string m;
  for (int i = 0; i < 1000; ++i) {  // the finish reaches the engine loop after the answer
    m = metrics();
    if (test::metric(m, "kiln:kv_cache_usage_perc{") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test::metric(m, "kiln:kv_cache_usage_perc{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 0) << m;
}

// A 20 MB prompt, completions and chat, is refused with 400 context_length_exceeded naming the
// field, after tokenizing about a context's worth of it (counted in bytes), not all of it.
TEST_F(ServeStages, PromptOverTheContextIsRefusedBeforeItIsTokenized) {
  const std::string huge(20 << 20, 'a');
  const double b0 = test::metric(metrics(), "kiln:tokenized_bytes_total{");
  const std::pair<std::string, json> cases[] = {
      {"/v1/completions", {{"prompt", huge}}},
      {"/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", huge}}}}}}};
  for (const auto& [path, body] : cases) {
    HttpReply r = http(port(), "POST", path, body.dump());
    ASSERT_EQ(r.status, 400) << r.body.substr(0, 300);
    const json e = json::parse(r.body)["error"];
    EXPECT_EQ(e["param"], path == "/v1/completions" ? "prompt" : "messages");
    EXPECT_EQ(e["code"], "context_length_exceeded");
    EXPECT_NE(e["message"].get<std::string>().find("more than 512 tokens"), std::string::npos)
        << e["message"];
  }
  const double tokenized = test::metric(metrics(), "kiln:tokenized_bytes_total{") - b0;
  EXPECT_GT(tokenized, 2 * 512);
  EXPECT_LT(tokenized, 2 * 2048) << "bytes tokenized for two 20 MB prompts";
  // The server still answers.
  post("/v1/completions", {{"prompt", "a"}, {"max_tokens", 2}});
}

// Up to 1,000 streams open at once (as many as the file-descriptor limit allows, raised to its
// hard limit first; the server inherits it) all complete, and the server's thread count stays
// bounded: the HTTP layer is event-driven, not a thread per connection.
TEST(ServeMany, ThousandStreamsCompleteOnBoundedThreads) {
  rlimit lim{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &lim), 0);
  lim.rlim_cur = std::min<rlim_t>(lim.rlim_max, 4096);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
  const int N = int(std::min<rlim_t>(1000, lim.rlim_cur - 64));
  ASSERT_GE(N, 300) << "RLIMIT_NOFILE hard limit " << lim.rlim_max << " is too low";
  test::TempDir dir("kiln-serve-many");
  test::make_model_dir(dir / "tiny");
  test::ServerProcess server(dir / "tiny", "--max-running 64 --max-queue 1000", dir / "server.log");
  ASSERT_TRUE(server.ready()) << server.log();
  const std::string raw = test::request_text(
      "POST", "/v1/completions",
      json{{"prompt", "the cat"}, {"max_tokens", 4}, {"ignore_eos", true}, {"stream", true}}
          .dump());
  std::vector<std::unique_ptr<test::OpenRequest>> streams;
  for (int i = 0; i < N; ++i)
    streams.push_back(std::make_unique<test::OpenRequest>(server.port(), raw));
  // Every response has started: all N connections are accepted and held by the server at once.
  for (auto& s : streams) ASSERT_TRUE(s->read_until("\r\n\r\n")) << s->received();
  const int threads = thread_count(server.pid());
  EXPECT_GT(threads, 0);
  EXPECT_LE(threads, 32) << "with " << N << " connections open";
  for (int i = 0; i < N; ++i) {
    streams[i]->read_all();
    ASSERT_NE(streams[i]->received().find("data: [DONE]"), std::string::npos)
        << "stream " << i << ": " << streams[i]->received();
    EXPECT_NE(streams[i]->received().find("\"finish_reason\":\"length\""), std::string::npos);
  }
  streams.clear();
  EXPECT_LE(thread_count(server.pid()), 32);
  const std::string m = http(server.port(), "GET", "/metrics").body;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:num_requests_waiting{"), 0) << m;
}

// A model whose vocabulary is larger than its tokenizer's samples an id with no text: the request
// is answered with an error, streamed or not, instead of hanging, and nothing is left running.
TEST(ServeUndecodable, AnIdWithoutTextIsAnErrorNotAHang) {
  test::TempDir dir{"kiln-serve-undecodable"};
  test::make_model_dir(dir / "big", 512, 300);
  test::ServerProcess server(dir / "big", "--max-running 4", dir / "server.log");
  ASSERT_TRUE(server.ready()) << server.log();
  const json body = {{"prompt", "the cat"}, {"max_tokens", 4}, {"logit_bias", {{"299", 100}}}};
  HttpReply r = http(server.port(), "POST", "/v1/completions", body.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("could not be turned into text"), std::string::npos) << r.body;
  json streamed = body;
  streamed["stream"] = true;
  r = http(server.port(), "POST", "/v1/completions", streamed.dump());
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("could not be turned into text"), std::string::npos) << r.body;
  // The engine loop drops the cancelled requests before its next step; poll (bounded).
  std::string m;
  for (int i = 0; i < 2000; ++i) {
    m = http(server.port(), "GET", "/metrics").body;
    if (test::metric(m, "kiln:num_requests_running{") == 0 &&
        test::metric(m, "kiln:kv_cache_usage_perc{") == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(test::metric(m, "kiln:num_requests_running{"), 0) << m;
  EXPECT_EQ(test::metric(m, "kiln:kv_cache_usage_perc{"), 0) << m;
}

}  // namespace
}  // namespace kiln

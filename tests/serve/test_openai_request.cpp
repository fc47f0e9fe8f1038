// Request parsing without a server: fields land in the engine parameters, null means absent,
// vLLM's top_k = -1 means off, max_tokens defaults (16 for completions, the rest of the context
// for chat), and the chat messages render in the guanaco format with its stop strings.
#include "kiln/serve/openai_request.h"

#include <gtest/gtest.h>

#include "kiln/serve/api_error.h"

namespace kiln::serve {
namespace {

const ChatTemplate& guanaco() {
  static const ChatTemplate t = ChatTemplate::guanaco();
  return t;
}

ApiLimits limits() {
  ApiLimits l;
  l.vocab_size = 300;
  l.max_context = 64;
  l.max_n = 4;
  return l;
}

TEST(OpenAIRequest, FieldsReachTheEngineParameters) {
  ApiRequest r = parse_request(Endpoint::completions, R"({
      "model": "m", "prompt": [[1, 2], "ab"], "max_tokens": 7, "temperature": 0.5,
      "top_p": 0.9, "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.2,
      "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": -3, "n": 2,
      "logit_bias": {"5": -100}, "stop": ["x", "yz"], "ignore_eos": true, "user": "u",
      "stream": true, "stream_options": {"include_usage": true}, "suffix": null})",
                               limits());
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_TRUE(r.prompts[0].is_ids);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(r.prompts[1].text, "ab");
  EXPECT_EQ(r.stop.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sp.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sp.top_p, 0.9f);
  EXPECT_EQ(r.sp.top_k, 0);
  EXPECT_FLOAT_EQ(r.sp.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.sp.repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(r.sp.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sp.frequency_penalty, -0.5f);
  EXPECT_EQ(r.sp.seed, uint64_t(-3));
  EXPECT_EQ(r.sp.n, 2);
  ASSERT_EQ(r.sp.logit_bias.size(), 1u);
  EXPECT_EQ(r.sp.logit_bias[0].first, 5);
  EXPECT_EQ(r.stop.stop_strings, (std::vector<std::string>{"x", "yz"}));
  EXPECT_TRUE(r.stop.ignore_eos);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(OpenAIRequest, LogprobsReachTheEngine) {
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  auto chat = [&](const std::string& rest) {
    return parse_request(Endpoint::chat, "{" + msgs + rest + "}", limits()).sp.logprobs;
  };
  EXPECT_EQ(chat(""), -1);
  EXPECT_EQ(chat(R"(, "logprobs": false)"), -1);
  EXPECT_EQ(chat(R"(, "logprobs": true)"), 0);
  EXPECT_EQ(chat(R"(, "logprobs": true, "top_logprobs": 5)"), 5);
  EXPECT_THROW(chat(R"(, "top_logprobs": 5)"), ApiError);
  EXPECT_THROW(chat(R"(, "logprobs": true, "top_logprobs": 21)"), ApiError);
  EXPECT_THROW(chat(R"(, "logprobs": 2)"), ApiError);
  auto comp = [&](const std::string& rest) {
    return parse_request(Endpoint::completions, R"({"prompt": "a")" + rest + "}", limits())
        .sp.logprobs;
  };
  EXPECT_EQ(comp(""), -1);
  EXPECT_EQ(comp(R"(, "logprobs": 0)"), 0);
  EXPECT_EQ(comp(R"(, "logprobs": 3)"), 3);
  EXPECT_THROW(comp(R"(, "logprobs": -1)"), ApiError);
}

TEST(OpenAIRequest, ResponseFormatCompilesTheGrammar) {
  auto rf = [&](const std::string& v) {
    return parse_request(Endpoint::completions, R"({"prompt": "a", "response_format": )" + v + "}",
                         limits())
        .json_schema;
  };
  EXPECT_EQ(rf(R"({"type": "text"})"), nullptr);
  EXPECT_NE(rf(R"({"type": "json_object"})"), nullptr);
  EXPECT_NE(rf(R"({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
               "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}}})"),
            nullptr);
  EXPECT_THROW(rf(R"({"type": "xml"})"), ApiError);
  EXPECT_THROW(rf(R"({"type": "json_schema"})"), ApiError);
  EXPECT_THROW(rf(R"({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}})"),
               ApiError);
}

TEST(OpenAIRequest, MaxTokensDefaultsAndContextRoom) {
  Tokenizer tok = Tokenizer::byte_level({});
  ApiRequest c = parse_request(Endpoint::completions, R"({"prompt": "hello"})", limits());
  EXPECT_EQ(prepare_prompts(c, tok, guanaco(), limits()).at(0).size(), 5u);
  EXPECT_EQ(c.stop.max_tokens, 16);
  ApiRequest chat = parse_request(Endpoint::chat,
                                  R"({"messages": [{"role": "user", "content": "hi"}]})", limits());
  auto ids = prepare_prompts(chat, tok, guanaco(), limits());
  const std::string text = "### Human: hi ### Assistant:";
  EXPECT_EQ(ids.at(0).size(), text.size());
  EXPECT_EQ(chat.stop.max_tokens, 64 - int(text.size()));
  EXPECT_EQ(chat.stop.stop_strings, (std::vector<std::string>{"### Human:", "###"}));
  ApiRequest big =
      parse_request(Endpoint::completions, R"({"prompt": "hello", "max_tokens": 60})", limits());
  try {
    prepare_prompts(big, tok, guanaco(), limits());
    FAIL() << "max_tokens past the context must be refused";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "max_tokens");
    EXPECT_NE(std::string(e.what()).find("at most 59"), std::string::npos) << e.what();
  }
}

TEST(OpenAIRequest, ChatRendersWithTheModelsTemplate) {
  // The server renders chat with the template it was given (tokenizer/chat_template.h is tested
  // against @huggingface/jinja); "developer" is OpenAI's newer name for the system role.
  Tokenizer tok = Tokenizer::byte_level({});
  const ChatTemplate chatml = ChatTemplate::load(kChatmlTemplate);
  ApiLimits lim = limits();
  lim.max_context = 256;  // ChatML's markers cost bytes
  ApiRequest chat = parse_request(
      Endpoint::chat,
      R"({"messages": [{"role": "developer", "content": "S"}, {"role": "user", "content": "u"}]})",
      lim);
  auto ids = prepare_prompts(chat, tok, chatml, lim);
  EXPECT_EQ(ids.at(0),
            tok.encode("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n"
                       "<|im_start|>assistant\n"));
  EXPECT_EQ(chat.stop.stop_strings, chatml.stop_strings());
}

}  // namespace
}  // namespace kiln::serve

// The body of POST /v1/completions and /v1/chat/completions, parsed and checked field by field
// into engine parameters. Every problem is an ApiError (400) naming the field and the limit:
// malformed JSON, invalid UTF-8, wrong types, out-of-range or huge numbers, unsupported options.
// Unknown fields are ignored, and null means "not given", as in OpenAI's API.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/infer/engine.h"
#include "kiln/serve/json_grammar.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::serve {

enum class Endpoint { completions, chat };

struct PromptInput {
  std::string text;
  std::vector<int32_t> ids;  // given as token ids instead of text
  bool is_ids = false;
};

struct ApiRequest {
  Endpoint endpoint = Endpoint::completions;
  std::string model;                  // "" = not given
  std::vector<PromptInput> prompts;   // completions: one engine request each
  std::vector<ChatMessage> messages;  // chat
  SamplingParams sp;
  StopConditions stop;
  bool max_tokens_given = false;
  bool stream = false, include_usage = false;
  // response_format json_object / json_schema: the grammar every sample follows; null = text.
  std::shared_ptr<const JsonSchema> json_schema;
};

// What the served model allows.
struct ApiLimits {
  int max_n = 16;        // samples per request (the engine's max_running or less)
  int vocab_size = 0;    // for logit_bias keys and prompt token ids
  int max_context = 0;   // positions per sequence
  int max_prompts = 64;  // prompts in one completions request
};

ApiRequest parse_request(Endpoint endpoint, std::string_view body, const ApiLimits& lim);

// Renders (chat, with the model's template) and tokenizes the prompts, adds the template's stop
// strings, and settles max_tokens:
// the prompt must leave room in the context; without max_tokens, completions generate 16
// tokens (OpenAI's default) and chat fills the context. ApiError naming the field otherwise.
// A prompt over the context is refused after tokenizing about max_context tokens of it, not all
// of it (Tokenizer::encode_at_most); *bytes_tokenized gets the bytes of text tokenized.
std::vector<std::vector<int32_t>> prepare_prompts(ApiRequest& req, const Tokenizer& tok,
                                                  const ChatTemplate& chat, const ApiLimits& lim,
                                                  size_t* bytes_tokenized = nullptr);

}  // namespace kiln::serve

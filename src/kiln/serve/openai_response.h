// OpenAI response bodies: whole completions, streamed chunks (Server-Sent Events lines) and
// usage, for both endpoints. Text that is not valid UTF-8 is replaced (U+FFFD), never an error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/infer/engine.h"
#include "kiln/serve/openai_request.h"

namespace kiln::serve {

struct ResponseMeta {
  Endpoint endpoint = Endpoint::completions;
  std::string id;     // "cmpl-..." / "chatcmpl-..."
  std::string model;  // the served name
  int64_t created = 0;
};

struct Usage {
  int prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};

// One sampled token's log probs with the tokens' bytes resolved (this file needs no tokenizer).
struct LogprobEntry {
  std::string token;  // its bytes (a piece of a UTF-8 character shows as U+FFFD)
  float logprob = 0;
  std::vector<std::pair<std::string, float>> top;  // most likely first
};

struct Choice {
  int index = 0;
  std::string text;
  FinishReason reason = FinishReason::none;
  bool has_logprobs = false;           // requested: "logprobs" is an object, else null
  std::vector<LogprobEntry> logprobs;  // every sampled token's
};

// Characters (code points, what Python's len counts) in UTF-8 text: the bytes that start one.
int64_t text_chars(const std::string& s);

// The non-streamed body: every choice and the usage.
std::string completion_body(const ResponseMeta& m, const std::vector<Choice>& choices,
                            const Usage& u);
// One SSE event "data: {chunk}\n\n" for choice `index`: the role first (chat, `role` true), then
// text deltas, then the finish reason (reason != none). with_usage_field adds "usage": null, as
// OpenAI does on every chunk when include_usage is on.
// `lp` (when not null) are the log probs of the tokens this chunk's text came from; text_offset
// is where this chunk's first token starts in the choice's text (completions' text_offset).
std::string chunk_event(const ResponseMeta& m, int index, bool role, const std::string& text,
                        FinishReason reason, bool with_usage_field,
                        const std::vector<LogprobEntry>* lp = nullptr, int64_t text_offset = 0);
// The last chunk with include_usage: no choices, the usage.
std::string usage_event(const ResponseMeta& m, const Usage& u);
inline const char* done_event() {
  return "data: [DONE]\n\n";
}

}  // namespace kiln::serve

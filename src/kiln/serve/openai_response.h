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

struct Choice {
  int index = 0;
  std::string text;
  FinishReason reason = FinishReason::none;
};

// The non-streamed body: every choice and the usage.
std::string completion_body(const ResponseMeta& m, const std::vector<Choice>& choices,
                            const Usage& u);
// One SSE event "data: {chunk}\n\n" for choice `index`: the role first (chat, `role` true), then
// text deltas, then the finish reason (reason != none). with_usage_field adds "usage": null, as
// OpenAI does on every chunk when include_usage is on.
std::string chunk_event(const ResponseMeta& m, int index, bool role, const std::string& text,
                        FinishReason reason, bool with_usage_field);
// The last chunk with include_usage: no choices, the usage.
std::string usage_event(const ResponseMeta& m, const Usage& u);
inline const char* done_event() {
  return "data: [DONE]\n\n";
}

}  // namespace kiln::serve

#include "kiln/serve/openai_response.h"

#include <nlohmann/json.hpp>

namespace kiln::serve {

using json = nlohmann::json;

namespace {

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

json reason_json(FinishReason r) {
  return r == FinishReason::none ? json(nullptr) : json(finish_reason_name(r));
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json head(const ResponseMeta& m, const char* object) {
  return {{"id", m.id},
          {"object", object},
          {"created", m.created},
          {"model", m.model},
          {"system_fingerprint", nullptr}};
}

json bytes_json(const std::string& s) {
  json b = json::array();
  for (unsigned char ch : s) b.push_back(int(ch));
  return b;
}

// Chat: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
// Completions: {tokens, token_logprobs, top_logprobs: [{token: logprob} incl. the sampled one],
// text_offset}, the legacy shape.
json logprobs_json(Endpoint ep, const std::vector<LogprobEntry>& lp, int64_t offset) {
  if (ep == Endpoint::chat) {
    json content = json::array();
    for (const LogprobEntry& e : lp) {
      json top = json::array();
      for (const auto& [t, l] : e.top)
        top.push_back({{"token", t}, {"logprob", l}, {"bytes", bytes_json(t)}});
      content.push_back({{"token", e.token},
                         {"logprob", e.logprob},
                         {"bytes", bytes_json(e.token)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const LogprobEntry& e : lp) {
    tokens.push_back(e.token);
    lps.push_back(e.logprob);
    json top = json::object();
    for (const auto& [t, l] : e.top) top[t] = l;
    top[e.token] = e.logprob;
    tops.push_back(std::move(top));
    offs.push_back(offset);
    offset += text_chars(e.token);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(lps)},
          {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offs)}};
}

}  // namespace

int64_t text_chars(const std::string& s) {
  int64_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

std::string completion_body(const ResponseMeta& m, const std::vector<Choice>& choices,
                            const Usage& u) {
  const bool chat = m.endpoint == Endpoint::chat;
  json body = head(m, chat ? "chat.completion" : "text_completion");
  json cs = json::array();
  for (const Choice& c : choices) {
    json j = {
        {"index", c.index},
        {"logprobs", c.has_logprobs ? logprobs_json(m.endpoint, c.logprobs, 0) : json(nullptr)},
        {"finish_reason", reason_json(c.reason)}};
    if (chat) {
      j["message"] = {{"role", "assistant"}, {"content", c.text}, {"refusal", nullptr}};
    } else {
      j["text"] = c.text;
    }
    cs.push_back(std::move(j));
  }
  body["choices"] = std::move(cs);
  body["usage"] = usage_json(u);
  return dump(body);
}

std::string chunk_event(const ResponseMeta& m, int index, bool role, const std::string& text,
                        FinishReason reason, bool with_usage_field,
                        const std::vector<LogprobEntry>* lp, int64_t text_offset) {
  const bool chat = m.endpoint == Endpoint::chat;
  json body = head(m, chat ? "chat.completion.chunk" : "text_completion");
  json c = {{"index", index},
            {"logprobs", lp ? logprobs_json(m.endpoint, *lp, text_offset) : json(nullptr)},
            {"finish_reason", reason_json(reason)}};
  if (chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (role || !text.empty()) delta["content"] = text;
    c["delta"] = std::move(delta);
  } else {
    c["text"] = text;
  }
  body["choices"] = json::array({std::move(c)});
  if (with_usage_field) body["usage"] = nullptr;
  return "data: " + dump(body) + "\n\n";
}

std::string usage_event(const ResponseMeta& m, const Usage& u) {
  json body = head(m, m.endpoint == Endpoint::chat ? "chat.completion.chunk" : "text_completion");
  body["choices"] = json::array();
  body["usage"] = usage_json(u);
  return "data: " + dump(body) + "\n\n";
}

}  // namespace kiln::serve

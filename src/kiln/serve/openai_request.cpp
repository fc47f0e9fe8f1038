#include "kiln/serve/openai_request.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/serve/api_error.h"

namespace kiln::serve {

using json = nlohmann::json;

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

void bad_request(const std::string& param, const std::string& message) {
  throw ApiError(400, "[" + param + "] " + message, param);
}

namespace {

const char* type_name(const json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

// The field when given (present and not null).
const json* field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad_request(name, std::string("must be a number, got ") + type_name(v));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi))  // also rejects NaN
    bad_request(name,
                "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
  return x;
}

int64_t integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer())
    bad_request(
        name, std::string("must be an integer, got ") + (v.is_number() ? v.dump() : type_name(v)));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi))
    bad_request(name, "must be at most " + std::to_string(hi) + ", got " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    bad_request(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                          std::to_string(x));
  return x;
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad_request(name, std::string("must be a boolean, got ") + type_name(v));
  return v.get<bool>();
}

std::vector<int32_t> token_ids(const json& v, const std::string& name, int vocab) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < v.size(); ++i)
    ids.push_back(int32_t(integer(v[i], name + "[" + std::to_string(i) + "]", 0, vocab - 1)));
  if (ids.empty()) bad_request(name, "is an empty list of token ids");
  return ids;
}

void parse_prompt(const json& p, ApiRequest& r, const ApiLimits& lim) {
  auto text = [&](std::string s) { r.prompts.push_back({std::move(s), {}, false}); };
  auto ids = [&](std::vector<int32_t> t) { r.prompts.push_back({"", std::move(t), true}); };
  if (p.is_string()) return text(p.get<std::string>());
  if (!p.is_array() || p.empty())
    bad_request("prompt", std::string("must be a string, a list of strings or a list of token "
                                      "ids, got ") +
                              (p.is_array() ? "an empty list" : type_name(p)));
  if (p[0].is_number()) return ids(token_ids(p, "prompt", lim.vocab_size));
  if (int(p.size()) > lim.max_prompts)
    bad_request("prompt", "holds " + std::to_string(p.size()) + " prompts; at most " +
                              std::to_string(lim.max_prompts) + " per request");
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string name = "prompt[" + std::to_string(i) + "]";
    if (p[i].is_string()) {
      text(p[i].get<std::string>());
    } else if (p[i].is_array()) {
      ids(token_ids(p[i], name, lim.vocab_size));
    } else {
      bad_request(name,
                  std::string("must be a string or a list of token ids, got ") + type_name(p[i]));
    }
  }
}

void parse_messages(const json& m, ApiRequest& r) {
  if (!m.is_array() || m.empty())
    bad_request("messages", std::string("must be a non-empty list of messages, got ") +
                                (m.is_array() ? "an empty list" : type_name(m)));
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string name = "messages[" + std::to_string(i) + "]";
    if (!m[i].is_object())
      bad_request(name, std::string("must be an object, got ") + type_name(m[i]));
    const json* role = field(m[i], "role");
    if (!role || !role->is_string())
      bad_request(name + ".role", "must be one of system, developer, user, assistant, tool");
    const std::string ro = role->get<std::string>();
    if (ro != "system" && ro != "developer" && ro != "user" && ro != "assistant" && ro != "tool")
      bad_request(name + ".role",
                  "must be one of system, developer, user, assistant, tool, got '" + ro + "'");
    ChatMessage msg{ro == "developer" ? "system" : ro, ""};  // templates know "system"
    if (const json* c = field(m[i], "content")) {
      if (c->is_string()) {
        msg.content = c->get<std::string>();
      } else if (c->is_array()) {  // content parts: only text parts
        for (size_t k = 0; k < c->size(); ++k) {
          const json& part = (*c)[k];
          const std::string pn = name + ".content[" + std::to_string(k) + "]";
          const json* type = part.is_object() ? field(part, "type") : nullptr;
          const json* t = part.is_object() ? field(part, "text") : nullptr;
          if (!type || *type != "text" || !t || !t->is_string())
            bad_request(pn, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
          msg.content += t->get<std::string>();
        }
      } else {
        bad_request(name + ".content",
                    std::string("must be a string or a list of text parts, got ") + type_name(*c));
      }
    } else if (ro != "assistant") {
      bad_request(name + ".content", "is missing");
    }
    r.messages.push_back(std::move(msg));
  }
}

void parse_stop(const json& s, ApiRequest& r) {
  constexpr int kMaxStops = 16;
  auto add = [&](const json& v, const std::string& name) {
    if (!v.is_string()) bad_request(name, std::string("must be a string, got ") + type_name(v));
    if (v.get_ref<const std::string&>().empty()) bad_request(name, "is an empty string");
    r.stop.stop_strings.push_back(v.get<std::string>());
  };
  if (s.is_string()) return add(s, "stop");
  if (!s.is_array())
    bad_request("stop", std::string("must be a string or a list of strings, got ") + type_name(s));
  if (s.size() > kMaxStops)
    bad_request("stop", "holds " + std::to_string(s.size()) + " strings; at most " +
                            std::to_string(kMaxStops));
  for (size_t i = 0; i < s.size(); ++i) add(s[i], "stop[" + std::to_string(i) + "]");
}

void parse_sampling(const json& b, ApiRequest& r, const ApiLimits& lim) {
  SamplingParams& sp = r.sp;
  if (const json* v = field(b, "temperature"))
    sp.temperature = float(number(*v, "temperature", 0, 2));
  if (const json* v = field(b, "top_p")) sp.top_p = float(number(*v, "top_p", 0, 1));
  if (sp.top_p <= 0) bad_request("top_p", "must be > 0");
  if (const json* v = field(b, "top_k")) {
    const int64_t k = integer(*v, "top_k", -1, std::numeric_limits<int32_t>::max());
    sp.top_k = k < 0 ? 0 : int(std::min<int64_t>(k, lim.vocab_size));  // -1 = off (vLLM)
  }
  if (const json* v = field(b, "min_p")) sp.min_p = float(number(*v, "min_p", 0, 1));
  if (const json* v = field(b, "repetition_penalty"))
    sp.repetition_penalty = float(number(*v, "repetition_penalty", 0.01, 100));
  if (const json* v = field(b, "presence_penalty"))
    sp.presence_penalty = float(number(*v, "presence_penalty", -2, 2));
  if (const json* v = field(b, "frequency_penalty"))
    sp.frequency_penalty = float(number(*v, "frequency_penalty", -2, 2));
  if (const json* v = field(b, "seed"))
    sp.seed = uint64_t(integer(*v, "seed", std::numeric_limits<int64_t>::min(),
                               std::numeric_limits<int64_t>::max()));
  if (const json* v = field(b, "n")) sp.n = int(integer(*v, "n", 1, lim.max_n));
  if (const json* v = field(b, "logit_bias")) {
    if (!v->is_object())
      bad_request("logit_bias", std::string("must be an object mapping token ids to biases, got ") +
                                    type_name(*v));
    for (auto it = v->begin(); it != v->end(); ++it) {
      const std::string name = "logit_bias." + it.key();
      size_t used = 0;
      long id = -1;
      try {
        id = std::stol(it.key(), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != it.key().size() || id < 0 || id >= lim.vocab_size)
        bad_request(
            name, "the key must be a token id in [0, " + std::to_string(lim.vocab_size - 1) + "]");
      sp.logit_bias.push_back({int32_t(id), float(number(it.value(), name, -100, 100))});
    }
  }
}

// Chat: logprobs (boolean) + top_logprobs (0..20, needs logprobs); completions: logprobs
// (0..20 alternatives). Both land in SamplingParams::logprobs (-1 = off).
void parse_logprobs(const json& b, ApiRequest& r) {
  constexpr int kMaxTop = 20;
  const json* lp = field(b, "logprobs");
  if (r.endpoint == Endpoint::completions) {
    if (lp) r.sp.logprobs = int(integer(*lp, "logprobs", 0, kMaxTop));
    return;
  }
  const bool on = lp && boolean(*lp, "logprobs");
  if (const json* v = field(b, "top_logprobs")) {
    const int k = int(integer(*v, "top_logprobs", 0, kMaxTop));
    if (!on) bad_request("top_logprobs", "needs \"logprobs\": true");
    r.sp.logprobs = k;
  } else if (on) {
    r.sp.logprobs = 0;
  }
}

// {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}.
// The schema is read again from the body in its own key order (properties come out in it).
void parse_response_format(const json& v, std::string_view body, ApiRequest& r) {
  const json* t = v.is_object() ? field(v, "type") : nullptr;
  if (!t || !t->is_string())
    bad_request("response_format.type", "must be one of text, json_object, json_schema");
  const std::string type = t->get<std::string>();
  if (type == "text") return;
  if (type == "json_object") {
    r.json_schema = JsonSchema::any_object();
    return;
  }
  if (type != "json_schema")
    bad_request("response_format.type",
                "must be one of text, json_object, json_schema, got '" + type + "'");
  const json* js = field(v, "json_schema");
  const json* schema = js && js->is_object() ? field(*js, "schema") : nullptr;
  if (!schema || !schema->is_object())
    bad_request("response_format.json_schema.schema", "must be a JSON schema object");
  try {
    const auto ordered = nlohmann::ordered_json::parse(body);
    r.json_schema = JsonSchema::compile(ordered["response_format"]["json_schema"]["schema"].dump());
  } catch (const Error& e) {
    bad_request("response_format.json_schema.schema", e.what());
  }
}

}  // namespace

ApiRequest parse_request(Endpoint endpoint, std::string_view body, const ApiLimits& lim) {
  json b;
  try {
    b = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400,
                   std::string("the body is not valid JSON (or not valid UTF-8): ") + e.what());
  }
  if (!b.is_object())
    throw ApiError(400, std::string("the body must be a JSON object, got ") + type_name(b));
  ApiRequest r;
  r.endpoint = endpoint;
  if (const json* v = field(b, "model")) {
    if (!v->is_string())
      bad_request("model", std::string("must be a string, got ") + type_name(*v));
    r.model = v->get<std::string>();
  }
  if (endpoint == Endpoint::chat) {
    const json* m = field(b, "messages");
    if (!m) bad_request("messages", "is required");
    parse_messages(*m, r);
  } else {
    const json* p = field(b, "prompt");
    if (!p) bad_request("prompt", "is required");
    parse_prompt(*p, r, lim);
  }
  const int64_t most = lim.max_context;
  for (const char* name : {"max_tokens", "max_completion_tokens"})
    if (const json* v = field(b, name)) {
      r.stop.max_tokens = int(integer(*v, name, 1, most));
      r.max_tokens_given = true;
    }
  parse_sampling(b, r, lim);
  if (const json* v = field(b, "stop")) parse_stop(*v, r);
  if (const json* v = field(b, "ignore_eos")) r.stop.ignore_eos = boolean(*v, "ignore_eos");
  if (const json* v = field(b, "stream")) r.stream = boolean(*v, "stream");
  if (const json* v = field(b, "stream_options")) {
    if (!v->is_object())
      bad_request("stream_options", std::string("must be an object, got ") + type_name(*v));
    if (!r.stream) bad_request("stream_options", "is only allowed with stream: true");
    if (const json* u = field(*v, "include_usage"))
      r.include_usage = boolean(*u, "stream_options.include_usage");
  }
  if (const json* v = field(b, "user"))
    if (!v->is_string()) bad_request("user", std::string("must be a string, got ") + type_name(*v));
  parse_logprobs(b, r);
  // Refused clearly rather than ignored: options whose output the client would rely on.
  if (const json* v = field(b, "best_of"))
    if (integer(*v, "best_of", 1, lim.max_n) != r.sp.n)
      bad_request("best_of", "must equal n: best-of sampling is not supported");
  if (const json* v = field(b, "use_beam_search"))
    if (boolean(*v, "use_beam_search")) bad_request("use_beam_search", "is not supported");
  if (const json* v = field(b, "echo"))
    if (boolean(*v, "echo")) bad_request("echo", "is not supported");
  if (field(b, "suffix")) bad_request("suffix", "is not supported");
  if (const json* v = field(b, "response_format")) parse_response_format(*v, body, r);
  if (const json* v = field(b, "tools"))
    if (!v->is_array() || !v->empty()) bad_request("tools", "tool calling is not supported");
  return r;
}

std::vector<std::vector<int32_t>> prepare_prompts(ApiRequest& req, const Tokenizer& tok,
                                                  const ChatTemplate& chat, const ApiLimits& lim,
                                                  size_t* bytes_tokenized) {
  std::vector<std::vector<int32_t>> out;
  std::string field_name = "prompt";
  size_t bytes = 0;
  bool over = false;  // a prompt's tokenization stopped at the context: it has more tokens
  // Stop tokenizing once a prompt cannot fit: its size is known to be over the context then.
  auto encode = [&](const std::string& text) {
    Tokenizer::Encoded e = tok.encode_at_most(text, size_t(lim.max_context));
    bytes += e.bytes;
    over |= e.ids.size() > size_t(lim.max_context);
    return std::move(e.ids);
  };
  if (req.endpoint == Endpoint::chat) {
    for (std::string& s : chat.stop_strings()) req.stop.stop_strings.push_back(std::move(s));
    out.push_back(encode(chat.render(req.messages)));
    field_name = "messages";
  } else {
    for (const PromptInput& p : req.prompts) {
      if (p.is_ids) {
        out.push_back(p.ids);
      } else {
        out.push_back(encode(p.text));
        // An empty prompt starts a document, as in `kiln generate`.
        if (out.back().empty() && tok.eos_id()) out.back().push_back(*tok.eos_id());
        if (out.back().empty()) bad_request("prompt", "is empty and the model has no eos token");
      }
      if (out.back().size() >= size_t(lim.max_context)) break;
    }
  }
  if (bytes_tokenized) *bytes_tokenized = bytes;
  size_t longest = 0;
  for (const auto& ids : out) longest = std::max(longest, ids.size());
  const int room = lim.max_context - int(longest);
  if (room < 1)
    throw ApiError(
        400,
        "[" + field_name + "] this model's maximum context length is " +
            std::to_string(lim.max_context) + " tokens, but the prompt has " +
            (over ? "more than " + std::to_string(lim.max_context) : std::to_string(longest)) +
            " tokens; shorten it",
        field_name, "invalid_request_error", "context_length_exceeded");
  if (!req.max_tokens_given) {
    req.stop.max_tokens = req.endpoint == Endpoint::chat ? room : std::min(16, room);
  } else if (req.stop.max_tokens > room) {
    throw ApiError(400,
                   "[max_tokens] this model's maximum context length is " +
                       std::to_string(lim.max_context) + " tokens; the prompt has " +
                       std::to_string(longest) + " and max_tokens asks for " +
                       std::to_string(req.stop.max_tokens) + " more; lower max_tokens to at most " +
                       std::to_string(room),
                   "max_tokens", "invalid_request_error", "context_length_exceeded");
  }
  return out;
}

}  // namespace kiln::serve

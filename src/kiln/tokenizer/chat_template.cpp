#include "kiln/tokenizer/chat_template.h"

#include <algorithm>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/gguf.h"
#include "kiln/io/json_file.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

// The turns kiln chat has always written: "### Human: {user} ### Assistant:{reply} " (the model's
// reply keeps its own leading space), so a conversation is one line of guanaco turns.
const char* const kGuanacoTemplate =
    "{%- for message in messages -%}\n"
    "{%- if message['role'] == 'system' -%}\n"
    "{{ message['content'] + ' ' }}\n"
    "{%- elif message['role'] == 'user' -%}\n"
    "{{ '### Human: ' + message['content'] }}\n"
    "{%- elif message['role'] == 'assistant' -%}\n"
    "{{ ' ### Assistant:' + message['content'] + ' ' }}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{ ' ### Assistant:' }}{%- endif -%}\n";

const char* const kChatmlTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}";

ChatTemplate ChatTemplate::load(std::string_view source, jinja::Map special_tokens,
                                std::string origin) {
  ChatTemplate t;
  try {
    t.tmpl_ = jinja::Template::parse(source);
  } catch (const Error& e) {
    throw Error(str(e.what(), origin.empty() ? "" : " (in the chat template from " + origin + ")"));
  }
  t.source_ = std::string(source);
  t.origin_ = std::move(origin);
  t.specials_ = std::move(special_tokens);
  return t;
}

ChatTemplate ChatTemplate::guanaco() {
  ChatTemplate t = load(kGuanacoTemplate, {}, "kiln's default (guanaco)");
  t.is_default_ = true;
  return t;
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  if (is_default_) return {"### Human:", "###"};
  std::vector<std::string> out;
  for (const auto& [k, v] : specials_)
    if (k == "eos_token" && v.is_string() && !v.as_string().empty()) out.push_back(v.as_string());
  for (const char* m : {"<|im_end|>", "<|im_start|>", "<|eot_id|>", "<end_of_turn>", "<|end|>",
                        "<｜end▁of▁sentence｜>", "</s>"})
    if (source_.find(m) != std::string::npos && std::find(out.begin(), out.end(), m) == out.end())
      out.push_back(m);
  return out;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 const ChatRenderOptions& opts) const {
  jinja::List list;
  for (const ChatMessage& m : messages)
    list.push_back(jinja::Value(jinja::Map{{"role", m.role}, {"content", m.content}}));
  return render(jinja::Value(std::move(list)), opts);
}

std::string ChatTemplate::render(const jinja::Value& messages,
                                 const ChatRenderOptions& opts) const {
  KILN_CHECK(messages.is_list(), "chat_template", "messages must be a list, got a ",
             messages.type_name());
  jinja::Map vars = specials_;
  vars.emplace_back("messages", messages);
  vars.emplace_back("add_generation_prompt", opts.add_generation_prompt);
  for (const auto& kv : opts.extra) vars.push_back(kv);
  return tmpl_.render(vars);
}

std::optional<ChatTemplate> chat_template_from_config(const nlohmann::json& config,
                                                      std::string origin) {
  if (!config.is_object() || !config.contains("chat_template")) return std::nullopt;
  const nlohmann::json& ct = config["chat_template"];
  std::string source;
  if (ct.is_string()) {
    source = ct.get<std::string>();
  } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    for (const auto& e : ct)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        source = e["template"].get<std::string>();
    KILN_CHECK(!source.empty(), "chat_template", origin,
               ": chat_template is a list without an entry named \"default\"");
  } else if (ct.is_null()) {
    return std::nullopt;
  } else {
    fail("chat_template", origin, ": chat_template must be a string or a list of {name, template}");
  }
  jinja::Map specials;
  for (const auto& [key, v] : config.items()) {
    const bool token_key = key.size() > 6 && key.compare(key.size() - 6, 6, "_token") == 0;
    if (token_key && v.is_string()) specials.emplace_back(key, v.get<std::string>());
    if (token_key && v.is_object() && v.contains("content") && v["content"].is_string())
      specials.emplace_back(key, v["content"].get<std::string>());
    if (key == "additional_special_tokens" && v.is_array())
      specials.emplace_back(key, jinja::from_json(v));
  }
  return ChatTemplate::load(source, std::move(specials), std::move(origin));
}

namespace {

bool has_special(const jinja::Map& m, const char* key) {
  for (const auto& [k, v] : m)
    if (k == key) return true;
  return false;
}

// bos_token / eos_token from the tokenizer when the template's source did not name them.
void add_token_strings(ChatTemplate& t, jinja::Map specials, std::optional<int32_t> bos,
                       std::optional<int32_t> eos, const Tokenizer* tok) {
  if (!tok) return;
  if (bos && !has_special(specials, "bos_token"))
    specials.emplace_back("bos_token", tok->token_bytes(*bos));
  if (eos && !has_special(specials, "eos_token"))
    specials.emplace_back("eos_token", tok->token_bytes(*eos));
  t = ChatTemplate::load(t.source(), std::move(specials), t.origin());
}

}  // namespace

std::string chat_template_source(const std::string& model_dir) {
  const std::string config = model_dir + "/tokenizer_config.json";
  if (!file_exists(config)) return "";
  const auto t = chat_template_from_config(read_json_file(config), config);
  return t ? t->source() : "";
}

ChatTemplate find_chat_template(const std::string& model_path, const Tokenizer* tok) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool is_dir = fs::is_directory(model_path, ec);
  const std::string dir = is_dir ? model_path : fs::path(model_path).parent_path().string();
  const std::string config = (dir.empty() ? std::string(".") : dir) + "/tokenizer_config.json";
  if (file_exists(config)) {
    if (auto t = chat_template_from_config(read_json_file(config), config)) {
      add_token_strings(*t, t->special_tokens(), std::nullopt, tok ? tok->eos_id() : std::nullopt,
                        tok);
      return *t;
    }
  }
  std::string gguf_path;
  if (is_dir && file_exists(model_path + "/model.gguf"))
    gguf_path = model_path + "/model.gguf";
  else if (!is_dir && model_path.size() > 5 && model_path.substr(model_path.size() - 5) == ".gguf")
    gguf_path = model_path;
  if (!gguf_path.empty()) {
    const gguf::File f = gguf::File::open(gguf_path);
    if (f.has("tokenizer.chat_template")) {
      ChatTemplate t = ChatTemplate::load(f.get_string("tokenizer.chat_template"), {},
                                          gguf_path + " (tokenizer.chat_template)");
      auto id = [&](const char* key) -> std::optional<int32_t> {
        if (!f.has(key)) return std::nullopt;
        return int32_t(f.get_int(key));
      };
      add_token_strings(t, {}, id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"),
                        tok);
      return t;
    }
  }
  if (tok && tok->special_id("<|im_start|>") && tok->special_id("<|im_end|>")) {
    ChatTemplate t = ChatTemplate::load(kChatmlTemplate, {}, "kiln's ChatML fallback");
    add_token_strings(t, {}, std::nullopt, tok->eos_id(), tok);
    return t;
  }
  return ChatTemplate::guanaco();
}

}  // namespace kiln

// Chat templates: role/content messages -> the prompt text a model was trained on, rendered with
// the model's own Jinja template (`chat_template` in tokenizer_config.json, or GGUF metadata
// `tokenizer.chat_template`) the way Hugging Face transformers' apply_chat_template does, or with
// kiln's default for models without one: the guanaco format its fine-tuning data uses,
// "### Human: ... ### Assistant: ...". Output is byte for byte @huggingface/jinja's
// (tests/tokenizer/test_chat_template.cpp). Rendering is linear in the messages; a template is
// parsed once and rendered from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kiln/tokenizer/jinja.h"

namespace kiln {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool", ...
  std::string content;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // end with the header that starts the assistant's turn
  jinja::Map extra;                   // more variables: tools, enable_thinking, date_string, ...
};

class ChatTemplate {
 public:
  // Parses `source` (errors name its line and column). `special_tokens` become variables:
  // bos_token, eos_token, ... as tokenizer_config.json names them. `origin` says where the
  // template came from, for logs ("tokenizer_config.json", "GGUF metadata").
  static ChatTemplate load(std::string_view source, jinja::Map special_tokens = {},
                           std::string origin = "");
  // kiln's default: "### Human: {user} ### Assistant:{reply} " per turn, a system prompt first.
  static ChatTemplate guanaco();

  std::string render(const std::vector<ChatMessage>& messages,
                     const ChatRenderOptions& opts = {}) const;
  // Messages as template values (a list of dicts with role, content and any other fields, e.g.
  // tool_calls or reasoning_content), as an OpenAI request's JSON converts to (jinja::from_json).
  std::string render(const jinja::Value& messages, const ChatRenderOptions& opts = {}) const;

  // Where a reply ends, for decoding: "### Human:" and "###" for guanaco; otherwise eos_token and
  // the end-of-turn markers the template writes (<|im_end|>, <|eot_id|>, <end_of_turn>, <|end|>,
  // <｜end▁of▁sentence｜>, </s>).
  std::vector<std::string> stop_strings() const;

  const std::string& source() const { return source_; }
  const std::string& origin() const { return origin_; }
  bool is_default() const { return is_default_; }
  const jinja::Map& special_tokens() const { return specials_; }

 private:
  jinja::Template tmpl_;
  std::string source_, origin_;
  jinja::Map specials_;
  bool is_default_ = false;
};

// The guanaco template's source, and ChatML's (kiln's fallback for a model without a template
// whose tokenizer has <|im_start|> and <|im_end|>).
extern const char* const kGuanacoTemplate;
extern const char* const kChatmlTemplate;

// A tokenizer_config.json's template: `chat_template` as a string, or the entry named "default"
// of a list of {name, template}; its special tokens (bos_token, eos_token, unk_token, pad_token,
// ..., strings or {"content": ...} objects) become variables. nullopt when it has no template.
std::optional<ChatTemplate> chat_template_from_config(const nlohmann::json& config,
                                                      std::string origin = "tokenizer_config.json");

// The template source in a model directory's tokenizer_config.json, or "" (what GGUF export
// writes as tokenizer.chat_template).
std::string chat_template_source(const std::string& model_dir);

// A model's template, looked up in order: tokenizer_config.json in the model directory (or
// beside a .gguf file); a GGUF file's (or a kiln quantize directory's model.gguf's)
// `tokenizer.chat_template`, with bos/eos from its token ids; else ChatML when `tok` has its
// special tokens; else the guanaco default. `tok`, when given, also supplies the eos string that
// the config does not name.
ChatTemplate find_chat_template(const std::string& model_path, const Tokenizer* tok = nullptr);

}  // namespace kiln

// Chat messages -> the prompt text the model continues. The one place kiln serve renders chat;
// today the guanaco format kiln's fine-tuning data and `kiln chat` use, until the Jinja chat
// template renderer (tokenizer/chat_template.h) takes its place behind this same interface.
#pragma once

#include <string>
#include <vector>

namespace kiln::serve {

struct ChatMessage {
  std::string role;     // "system", "developer", "user", "assistant" or "tool"
  std::string content;  // text parts joined
};

struct RenderedChat {
  std::string text;                       // ends with the generation prompt
  std::vector<std::string> stop_strings;  // where the model would start the next turn
};

//   [system\n] ### Human: u1 ### Assistant: a1 ### Human: u2 ### Assistant:
RenderedChat render_chat(const std::vector<ChatMessage>& messages);

}  // namespace kiln::serve

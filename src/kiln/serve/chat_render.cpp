#include "kiln/serve/chat_render.h"

namespace kiln::serve {

RenderedChat render_chat(const std::vector<ChatMessage>& messages) {
  RenderedChat r;
  for (const ChatMessage& m : messages) {
    if (m.role == "system" || m.role == "developer") {
      r.text += m.content + "\n";
    } else if (m.role == "assistant") {
      r.text += "### Assistant: " + m.content + " ";
    } else {  // user and tool turns are what the human side says
      r.text += "### Human: " + m.content + " ";
    }
  }
  r.text += "### Assistant:";
  r.stop_strings = {"### Human:", "###"};
  return r;
}

}  // namespace kiln::serve

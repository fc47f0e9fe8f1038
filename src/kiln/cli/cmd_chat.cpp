// kiln chat --model DIR [decoding options]: an interactive conversation on stdin/stdout. Each
// line is a user turn; the reply streams as it is generated; EOF ends the session. The whole
// conversation, rendered with the model's chat template (tokenizer/chat_template.h: its
// tokenizer_config.json or GGUF template, else ChatML for ChatML tokenizers, else guanaco's
// "### Human: ... ### Assistant:"), is the next turn's prompt, so the paged cache's prefix
// sharing skips recomputing the earlier turns' full blocks.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "kiln/cli/command.h"
#include "kiln/cli/decoding.h"
#include "kiln/cli/load.h"
#include "kiln/core/error.h"
#include "kiln/infer/engine.h"
#include "kiln/model/model_io.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

namespace {

struct ChatArgs {
  std::string model, adapter, system;
  DecodingArgs dec;
  bool show_prompt = false;
};

Command chat([](CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  a->dec.stop.max_tokens = 256;
  auto* cmd = app.add_subcommand("chat", "Interactive chat: one user turn per stdin line");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory, or a GGUF file")
      ->required();
  cmd->add_option("--adapter", a->adapter, "A PEFT LoRA adapter directory, applied to --model");
  cmd->add_option("--system", a->system, "System prompt (the first message of the conversation)");
  cmd->add_flag("--show-prompt", a->show_prompt,
                "Print each rendered prompt to stderr (and which chat template rendered it)");
  add_decoding_options(cmd, a->dec);
  cmd->callback([a] {
    finish_decoding_options(a->dec);
    KILN_CHECK(a->dec.sp.n == 1 && a->dec.sp.beams == 1, "chat",
               "chat streams one reply: --n and --beams must be 1");
    LoadedModel lm = load_for_inference(a->model, a->adapter);
    const Tokenizer& tok = lm.tok;
    const ChatTemplate tmpl = find_chat_template(
        quant::is_gguf_path(a->model) ? a->model : resolve_model_dir(a->model), &tok);
    if (a->show_prompt) std::fprintf(stderr, "[chat] template: %s\n", tmpl.origin().c_str());
    EngineOptions opts;
    opts.max_running = 1;
    Engine eng(lm.model->config(), quantized_weights(*lm.model, lm.qweights), opts, &tok);
    StopConditions stop = a->dec.stop;
    for (const auto& s : tmpl.stop_strings()) stop.stop_strings.push_back(s);
    std::vector<ChatMessage> messages;
    if (!a->system.empty()) messages.push_back({"system", a->system});
    std::string line;
    const bool tty = isatty(0);
    while (true) {
      if (tty) std::fputs("> ", stdout), std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;
      if (line.empty()) continue;
      messages.push_back({"user", line});
      const std::string prompt = tmpl.render(messages);
      if (a->show_prompt) std::fprintf(stderr, "[chat] prompt: %s\n", prompt.c_str());
      std::vector<int32_t> ids = tok.encode(prompt, /*allow_special=*/true);
      const int room = eng.max_context() - int(ids.size());
      KILN_CHECK(room > 1, "chat", "the conversation (", ids.size(),
                 " tokens) fills the model's context of ", eng.max_context(),
                 "; start a new session");
      StopConditions turn = stop;
      turn.max_tokens = std::min(turn.max_tokens, room);
      eng.add_request(ids, a->dec.sp, turn);
      std::string reply;
      while (!eng.idle())
        for (const TokenEvent& e : eng.step()) {
          reply += e.text;
          std::fputs(e.text.c_str(), stdout);
          std::fflush(stdout);
        }
      eng.run_all();
      std::fputs("\n", stdout);
      messages.push_back({"assistant", reply});
    }
  });
});

}  // namespace
}  // namespace kiln::cli

// kiln chat --model DIR [decoding options]: an interactive conversation on stdin/stdout. Each
// line is a user turn; the reply streams as it is generated; EOF ends the session. The whole
// conversation is the next turn's prompt, so the paged cache's prefix sharing skips recomputing
// the earlier turns' full blocks.
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
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/checkpoint.h"

namespace kiln::cli {

namespace {

// A chat template: what goes before a user turn, between it and the reply, and after the reply.
struct ChatTemplate {
  std::string system_prefix, user_prefix, assistant_prefix, turn_end;
  std::vector<std::string> stops;  // where the model would start the next user turn
};

// ChatML when the tokenizer has its special tokens; otherwise the guanaco format the
// fine-tuning data uses ("### Human: ... ### Assistant: ...").
ChatTemplate pick_template(const Tokenizer& tok) {
  if (tok.special_id("<|im_start|>") && tok.special_id("<|im_end|>"))
    return {"<|im_start|>system\n",
            "<|im_start|>user\n",
            "<|im_end|>\n<|im_start|>assistant\n",
            "<|im_end|>\n",
            {"<|im_end|>", "<|im_start|>"}};
  return {"", "### Human: ", " ### Assistant:", " ", {"### Human:", "###"}};
}

struct ChatArgs {
  std::string model, system;
  DecodingArgs dec;
};

Command chat([](CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  a->dec.stop.max_tokens = 256;
  auto* cmd = app.add_subcommand("chat", "Interactive chat: one user turn per stdin line");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory, or a GGUF file")
      ->required();
  cmd->add_option("--system", a->system, "System prompt (ChatML models)");
  add_decoding_options(cmd, a->dec);
  cmd->callback([a] {
    finish_decoding_options(a->dec);
    KILN_CHECK(a->dec.sp.n == 1 && a->dec.sp.beams == 1, "chat",
               "chat streams one reply: --n and --beams must be 1");
    LoadedModel lm = load_for_inference(a->model);
    const Tokenizer& tok = lm.tok;
    const ChatTemplate t = pick_template(tok);
    EngineOptions opts;
    opts.max_running = 1;
    Engine eng(lm.model->config(), quantized_weights(*lm.model, lm.qweights), opts, &tok);
    StopConditions stop = a->dec.stop;
    for (const auto& s : t.stops) stop.stop_strings.push_back(s);
    std::string history;
    if (!a->system.empty() && !t.system_prefix.empty())
      history = t.system_prefix + a->system + t.turn_end;
    std::string line;
    const bool tty = isatty(0);
    while (true) {
      if (tty) std::fputs("> ", stdout), std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;
      if (line.empty()) continue;
      history += t.user_prefix + line + t.assistant_prefix;
      std::vector<int32_t> ids = tok.encode(history, /*allow_special=*/true);
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
      history += reply + t.turn_end;
    }
  });
});

}  // namespace
}  // namespace kiln::cli

// `kiln serve`: the OpenAI-compatible HTTP API over one engine loop. Routes: GET /health,
// GET /v1/models, POST /v1/completions, POST /v1/chat/completions (whole or streamed as
// Server-Sent Events), GET /metrics (Prometheus), GET / (the chat page), and, as vLLM has them,
// POST /v1/load_lora_adapter and /v1/unload_lora_adapter: LoRA adapters served beside the base,
// picked per request by its `model` field, decoded in the same batches (infer/engine.h). The model
// loads on the engine thread while the server already answers (503 until it is ready);
// SIGTERM/SIGINT stop accepting, let running requests finish within the grace period, then
// run_server returns 0. A request passes through stages on their own threads: the HTTP io threads
// parse it, the tokenize stage renders the chat template and tokenizes, the engine loop only runs
// the model, and the detokenize stage turns ids into text and applies stop strings (kiln:stage_*
// metrics).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kiln/serve/engine_loop.h"
#include "kiln/serve/http_server.h"

namespace kiln::serve {

struct ServeOptions {
  HttpOptions http;
  std::string served_model_name = "kiln";
  std::string api_key;          // "" = no key needed
  int max_queue = 256;          // requests allowed to wait for a slot; more get 429
  double drain_timeout_s = 30;  // after SIGTERM: how long running requests may take
  int tokenize_threads = 1;     // the tokenize stage's (chat template + tokenizer)
  // LoRA adapters served from the start, NAME=DIR each (a PEFT adapter or LoRA run directory):
  // the server is ready once the model and these have loaded; one that fails stops it.
  std::vector<std::string> lora_modules;
  // POST /v1/load_lora_adapter and /v1/unload_lora_adapter answer 403 unless set: loading reads
  // server-side paths a client names (vLLM gates it the same way).
  bool runtime_lora = false;
};

// Serves until a signal; returns the exit status (0 after a drain, 1 if the model failed to
// load). on_listening(port) runs once the socket listens (before the model is ready).
int run_server(const ServeOptions& opts, ModelLoader load,
               const std::function<void(int port)>& on_listening = {});

}  // namespace kiln::serve

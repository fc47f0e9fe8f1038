// kiln serve --model M [--host H --port P --api-key KEY | --api-key-file F --max-running S
//                       --http-threads N --tokenize-threads N
//                       --token-budget T --kv-blocks B --max-queue Q --served-model-name NAME
//                       --lora NAME=DIR ... --allow-runtime-lora]
#include <filesystem>

#include "kiln/cli/command.h"
#include "kiln/cli/load.h"
#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/infer/engine.h"
#include "kiln/io/file.h"
#include "kiln/serve/server.h"
#include "kiln/tokenizer/chat_template.h"

namespace kiln::cli {
namespace {

struct ServeArgs {
  std::string model, adapter, api_key, api_key_file, name;
  serve::ServeOptions opts;
  EngineOptions engine;
  int kv_blocks = 0;
};

// The name the API reports by default: the model path's last component.
std::string default_name(const std::string& path) {
  std::filesystem::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();
  return p.filename().empty() ? "kiln" : p.filename().string();
}

Command serve_cmd([](CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server over the batched engine");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory, or a GGUF file")
      ->required();
  cmd->add_option("--adapter", a->adapter,
                  "A PEFT LoRA adapter directory, merged into --model's weights at load");
  cmd->add_option("--host", a->opts.http.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->opts.http.port, "Port (0 = any free port)")->capture_default_str();
  cmd->add_option("--http-threads", a->opts.http.threads, "Threads serving HTTP connections")
      ->capture_default_str();
  cmd->add_option("--tokenize-threads", a->opts.tokenize_threads,
                  "Threads rendering chat templates and tokenizing prompts")
      ->capture_default_str();
  auto* key = cmd->add_option("--api-key", a->api_key, "Require 'Authorization: Bearer KEY'");
  cmd->add_option("--api-key-file", a->api_key_file, "Read the API key from this file")
      ->excludes(key);
  cmd->add_option("--max-running", a->engine.max_running, "Sequences in flight at once")
      ->capture_default_str();
  cmd->add_option("--token-budget", a->engine.token_budget,
                  "Rows per engine step (decode tokens + prompt chunks)")
      ->capture_default_str();
  cmd->add_option("--kv-blocks", a->kv_blocks, "KV-cache blocks of 16 positions (0 = auto)")
      ->capture_default_str();
  cmd->add_option("--max-context", a->engine.max_context,
                  "Positions per sequence (0 = the model's)")
      ->capture_default_str();
  cmd->add_option("--max-queue", a->opts.max_queue, "Requests that may wait; more get 429")
      ->capture_default_str();
  cmd->add_option("--max-body-bytes", a->opts.http.max_body_bytes, "Larger bodies get 413")
      ->capture_default_str();
  cmd->add_option("--drain-timeout", a->opts.drain_timeout_s,
                  "Seconds running requests may take after SIGTERM")
      ->capture_default_str();
  cmd->add_option("--served-model-name", a->name, "Model name in the API (default: the path's)");
  cmd->add_option("--lora", a->opts.lora_modules,
                  "NAME=DIR: a LoRA adapter served beside the base as model NAME (repeatable; "
                  "requests of different adapters share batches)");
  cmd->add_flag("--allow-runtime-lora", a->opts.runtime_lora,
                "Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (they read "
                "server-side paths a client names)");
  cmd->callback([a] {
    serve::ServeOptions o = a->opts;
    o.served_model_name = a->name.empty() ? default_name(a->model) : a->name;
    o.api_key = a->api_key;
    if (!a->api_key_file.empty()) {
      KILN_CHECK(file_exists(a->api_key_file), "serve", "cannot read --api-key-file '",
                 a->api_key_file, "': no such file");
      o.api_key = read_file(a->api_key_file);
      while (!o.api_key.empty() && std::isspace(static_cast<unsigned char>(o.api_key.back())))
        o.api_key.pop_back();
      KILN_CHECK(!o.api_key.empty(), "serve", "--api-key-file '", a->api_key_file, "' is empty");
    }
    KILN_CHECK(o.max_queue >= 0, "serve", "--max-queue must be >= 0, got ", o.max_queue);
    for (const std::string& m : o.lora_modules)
      KILN_CHECK(m.find('=') != std::string::npos && m.find('=') > 0 && m.back() != '=', "serve",
                 "--lora '", m, "': give NAME=DIR (the name requests use as their model)");
    KILN_CHECK(a->engine.max_running >= 1, "serve", "--max-running must be >= 1");
    KILN_CHECK(o.tokenize_threads >= 1, "serve", "--tokenize-threads must be >= 1, got ",
               o.tokenize_threads);
    EngineOptions eo = a->engine;
    eo.cache_blocks = a->kv_blocks;
    eo.detokenize = false;  // the server's detokenize stage does it, after the engine
    const std::string path = a->model, adapter = a->adapter;
    serve::ModelLoader load = [path, adapter, eo]() {
      auto lm = std::make_shared<LoadedModel>(load_for_inference(path, adapter));
      serve::ServedModel m;
      m.tok = &lm->tok;
      m.chat = std::make_shared<const ChatTemplate>(find_chat_template(path, &lm->tok));
      log_info("chat template: ",
               m.chat->is_default() ? "kiln's default (guanaco)" : m.chat->origin());
      m.engine = std::make_unique<Engine>(
          lm->model->config(), quantized_weights(*lm->model, lm->qweights), eo, &lm->tok);
      m.max_running = eo.max_running;
      m.base = lm->model.get();
      m.owner = lm;
      return m;
    };
    const int rc = serve::run_server(o, load);
    if (rc != 0) fail("serve", "the server stopped: the model could not be served (see above)");
  });
});

}  // namespace
}  // namespace kiln::cli

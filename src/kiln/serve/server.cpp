#include "kiln/serve/server.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/serve/api_error.h"
#include "kiln/serve/chat_page.h"
#include "kiln/serve/detokenize_stage.h"
#include "kiln/serve/json_grammar.h"
#include "kiln/serve/lora_adapters.h"
#include "kiln/serve/openai_request.h"
#include "kiln/serve/openai_response.h"
#include "kiln/serve/worker_pool.h"

namespace kiln::serve {

namespace {

using json = nlohmann::json;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

HttpResponse error_response(const ApiError& e) {
  HttpResponse r{e.status, "application/json", error_body(e), {}};
  if (e.status == 429 || e.status == 503) r.headers.push_back({"Retry-After", "1"});
  return r;
}

// Constant-time in the key's contents (the length is not secret enough to hide).
bool same_key(const std::string& given, const std::string& key) {
  unsigned diff = given.size() != key.size();
  for (size_t i = 0; i < given.size(); ++i)
    diff |= unsigned(uint8_t(given[i]) ^ uint8_t(key[i % std::max<size_t>(1, key.size())]));
  return diff == 0;
}

// One API request's answer, built as its engine updates arrive. Lives on the connection's
// strand (every update is posted there), so it needs no lock.
struct Pending {
  std::shared_ptr<Exchange> ex;
  EngineLoop* loop = nullptr;
  ResponseMeta meta;
  bool stream = false, include_usage = false;
  int n = 1;
  std::vector<uint64_t> tickets;
  std::vector<Choice> choices;  // prompt i, sample k -> i * n + k
  const Tokenizer* tok = nullptr;
  bool logprobs = false;
  // Streaming with logprobs: per choice, the entries not yet sent (a token whose text is held
  // back sends its entry with the next text) and the characters of those sent (text_offset).
  std::vector<std::vector<LogprobEntry>> unsent;
  std::vector<int64_t> sent_chars;
  Usage usage;
  int remaining = 0;  // prompts not finished
  bool over = false;

  void cancel_all() {
    for (uint64_t t : tickets) loop->cancel(t);
  }

  void fail(const std::string& message) {
    if (over) return;
    over = true;
    cancel_all();
    const bool shutdown = message.find("shutting down") != std::string::npos;
    ApiError e(shutdown ? 503 : 400, message, "",
               shutdown ? "service_unavailable" : "invalid_request_error");
    if (stream) {  // headers went out already: an error event, then the end
      ex->write("data: " + error_body(e) + "\n\n");
      ex->finish();
    } else {
      ex->respond(error_response(e));
    }
  }

  void add_logprobs(int idx, const std::vector<TokenLogprob>& lps) {
    // A model's vocabulary may hold ids its tokenizer lacks (padding rows): those show as "".
    auto bytes = [&](int32_t t) -> std::string {
      try {
        return tok->token_bytes(t);
      } catch (const Error&) {
        return "";
      }
    };
    for (const TokenLogprob& lp : lps) {
      LogprobEntry e{bytes(lp.token), lp.logprob, {}};
      for (const auto& [t, l] : lp.top) e.top.push_back({bytes(t), l});
      if (stream) unsent[idx].push_back(e);
      choices[idx].logprobs.push_back(std::move(e));
    }
  }

  // A chunk with the choice's unsent log probs (the finish chunk has none left: null).
  void write_chunk(int idx, const std::string& text, FinishReason reason) {
    std::vector<LogprobEntry>& lp = unsent[idx];
    const bool with_lp = logprobs && (!lp.empty() || !text.empty());
    ex->write(chunk_event(meta, idx, false, text, reason, include_usage, with_lp ? &lp : nullptr,
                          sent_chars[idx]));
    for (const LogprobEntry& e : lp) sent_chars[idx] += text_chars(e.token);
    lp.clear();
  }

  void on_update(int prompt, EngineUpdate u) {
    if (over) return;
    if (!u.error.empty()) return fail(u.error);
    for (const TokenEvent& e : u.events) {
      const int idx = prompt * n + e.sample;
      if (logprobs) add_logprobs(idx, e.logprobs);
      if (!stream) continue;
      if (!e.text.empty()) write_chunk(idx, e.text, FinishReason::none);
      if (e.finished) write_chunk(idx, "", e.reason);
    }
    if (!u.result) return;
    const RequestResult& r = *u.result;
    usage.prompt_tokens += r.prompt_tokens;
    usage.cached_tokens += r.cached_prompt_tokens;
    for (size_t k = 0; k < r.samples.size(); ++k) {
      usage.completion_tokens += int(r.samples[k].tokens.size());
      Choice& c = choices[size_t(prompt) * n + k];
      c.text = r.samples[k].text;
      c.reason = r.samples[k].reason;
    }
    if (--remaining > 0) return;
    over = true;
    ex->set_log_note("id=" + meta.id + " prompt_tokens=" + std::to_string(usage.prompt_tokens) +
                     " completion_tokens=" + std::to_string(usage.completion_tokens) +
                     " cached_tokens=" + std::to_string(usage.cached_tokens));
    if (stream) {
      if (include_usage) ex->write(usage_event(meta, usage));
      ex->write(done_event());
      ex->finish();
    } else {
      ex->respond({200, "application/json", completion_body(meta, choices, usage), {}});
    }
  }
};

class Server {
 public:
  Server(const ServeOptions& o, ModelLoader load)
      : o_(o),
        metrics_(o.served_model_name),
        http_(
            o.http, [this](HttpRequest& req, std::shared_ptr<Exchange> ex) { handle(req, ex); },
            [this](const HttpRequest& req, int status, double s, size_t bytes,
                   const std::string& note) { done(req, status, s, bytes, note); }),
        detokenize_("detokenize", 1),
        loop_(std::move(load), o.max_queue, metrics_),
        tokenize_("tokenize", o.tokenize_threads) {
    std::random_device rd;
    id_salt_ = (uint64_t(rd()) << 32) ^ rd();
    metrics_.set_request_gauges([this] { return loop_.running(); },
                                [this] { return loop_.waiting(); });
  }

  // The engine loop, stopping, still hands updates to the detokenize stage: it drops them now.
  ~Server() { detokenize_.stop(); }

  int run(const std::function<void(int)>& on_listening) {
    http_.on_signal([this](int sig) { begin_drain(sig); });
    if (on_listening) on_listening(http_.port());
    log_info("[serve] listening on http://", o_.http.host, ":", http_.port(), " (model '",
             o_.served_model_name, "' loading)");
    std::thread watcher([this] {
      if (loop_.wait_loaded() == EngineLoop::State::ready) {
        for (const std::string& m : o_.lora_modules) {
          const std::string name = m.substr(0, m.find('=')), dir = m.substr(m.find('=') + 1);
          try {
            load_adapter(name, dir);
          } catch (const std::exception& e) {
            log_line(LogLevel::error, std::string("[serve] --lora ") + m + ": " + e.what());
            failed_ = true;
            http_.stop();
            return;
          }
        }
        ready_ = true;
        log_info("[serve] model '", o_.served_model_name, "' ready: context ",
                 loop_.engine_info().max_context(), ", up to ", loop_.max_running(),
                 " sequences in flight");
      } else {
        log_line(LogLevel::error, "[serve] the model failed to load: " + loop_.load_error());
        failed_ = true;
        http_.stop();
      }
    });
    http_.run();
    watcher.join();
    return failed_ ? 1 : 0;
  }

 private:
  void load_adapter(const std::string& name, const std::string& dir) {
    KILN_CHECK(name != o_.served_model_name, "lora", "'", name,
               "' is the base model's name; give the adapter another");
    adapters_.load(name, dir, loop_.base_model());
    log_info("[serve] LoRA adapter '", name, "' loaded from ", dir);
  }

  // POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter
  // {"lora_name"}, vLLM's bodies and plain-text answers.
  void lora_route(const HttpRequest& req, bool load, const std::shared_ptr<Exchange>& ex) {
    require(req, "POST");
    if (!o_.runtime_lora)
      throw ApiError(403,
                     "loading and unloading LoRA adapters at run time is off; start the server "
                     "with --allow-runtime-lora",
                     "", "invalid_request_error", "forbidden");
    json body = json::parse(req.body, nullptr, false);
    if (!body.is_object())
      throw ApiError(400, "the body is not a JSON object", "", "invalid_request_error");
    auto text = [&](const char* key) {
      const json* v = body.contains(key) ? &body[key] : nullptr;
      if (!v || !v->is_string() || v->get<std::string>().empty())
        throw ApiError(400, std::string("'") + key + "' must be a non-empty string", key,
                       "invalid_request_error");
      return v->get<std::string>();
    };
    const std::string name = text("lora_name");
    if (load) {
      try {
        load_adapter(name, text("lora_path"));
      } catch (const Error& e) {
        throw ApiError(400, e.what(), "lora_path", "invalid_request_error");
      }
      return ex->respond({200,
                          "text/plain; charset=utf-8",
                          "Success: LoRA adapter '" + name + "' added successfully.",
                          {}});
    }
    if (!adapters_.unload(name))
      throw ApiError(404, "no LoRA adapter named '" + name + "' is loaded", "lora_name",
                     "invalid_request_error", "not_found");
    log_info("[serve] LoRA adapter '", name, "' unloaded");
    ex->respond({200,
                 "text/plain; charset=utf-8",
                 "Success: LoRA adapter '" + name + "' removed successfully.",
                 {}});
  }

  void begin_drain(int sig) {
    if (draining_.exchange(true)) return;
    log_info("[serve] signal ", sig, ": draining (no new requests; ", open_.load(), " open, up to ",
             o_.drain_timeout_s, "s)");
    http_.stop_accepting();
    drain_deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(o_.drain_timeout_s));
    poll_drain();
  }
  void poll_drain() {
    if (open_.load() == 0 || failed_) {
      log_info("[serve] drained; exiting");
      http_.stop();
      return;
    }
    if (Clock::now() > drain_deadline_ && !aborted_) {
      aborted_ = true;
      log_warn("[serve] drain timeout: aborting ", loop_.in_flight(), " requests");
      loop_.abort_all("the server is shutting down");
    }
    http_.after(20, [this] { poll_drain(); });
  }

  void done(const HttpRequest& req, int status, double s, size_t bytes, const std::string& note) {
    if (req.method != "?") --open_;
    metrics_.http_request(status);
    log_info("[access] ", req.remote, " \"", req.method, " ", req.target, "\" ", status, " ", bytes,
             "B ", int64_t(s * 1000.0 + 0.5), "ms", note.empty() ? "" : " ", note);
  }

  void handle(HttpRequest& req, const std::shared_ptr<Exchange>& ex) {
    const auto t0 = Clock::now();
    ++open_;
    std::string path = req.target.substr(0, req.target.find('?'));
    try {
      route(req, path, ex);
    } catch (const ApiError& e) {
      ex->respond(error_response(e));
    } catch (const std::exception& e) {
      ex->respond(error_response(ApiError(500, e.what(), "", "internal_error")));
    }
    metrics_.stage(Stage::http, seconds_since(t0), 1);
  }

  void require(const HttpRequest& req, const char* method) {
    if (req.method != method)
      throw ApiError(405, std::string("use ") + method + " for " + req.target, "",
                     "invalid_request_error", "method_not_allowed");
  }

  void route(HttpRequest& req, const std::string& path, const std::shared_ptr<Exchange>& ex) {
    if (path == "/health") {
      require(req, "GET");
      if (!ready_ || draining_)
        throw ApiError(503, draining_ ? "the server is draining" : "the model is loading", "",
                       "service_unavailable");
      return ex->respond({200, "application/json", "{\"status\":\"ok\"}", {}});
    }
    if (path == "/") {
      require(req, "GET");
      return ex->respond({200, "text/html; charset=utf-8", chat_page_html(), {}});
    }
    if (!o_.api_key.empty()) {
      const std::string auth = req.header("authorization");
      const std::string given = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : "";
      if (!same_key(given, o_.api_key))
        throw ApiError(401,
                       auth.empty() ? "no API key: send the header 'Authorization: Bearer KEY'"
                                    : "incorrect API key",
                       "", "invalid_request_error", "invalid_api_key");
    }
    if (path == "/metrics") {
      require(req, "GET");
      return ex->respond({200, "text/plain; version=0.0.4; charset=utf-8", metrics_.render(), {}});
    }
    const bool models = path == "/v1/models";
    const bool comp = path == "/v1/completions", chat = path == "/v1/chat/completions";
    const bool load = path == "/v1/load_lora_adapter", unload = path == "/v1/unload_lora_adapter";
    if (!models && !comp && !chat && !load && !unload)
      throw ApiError(404, "no route " + req.method + " " + path, "", "invalid_request_error",
                     "not_found");
    if (draining_) throw ApiError(503, "the server is draining", "", "service_unavailable");
    if (!ready_)
      throw ApiError(503, "the model is loading; retry shortly", "", "service_unavailable");
    if (load || unload) return lora_route(req, load, ex);
    if (models) {
      require(req, "GET");
      const int ctx = loop_.engine_info().max_context();
      json data = json::array({json{{"id", o_.served_model_name},
                                    {"object", "model"},
                                    {"created", created_},
                                    {"owned_by", "kiln"},
                                    {"max_model_len", ctx}}});
      for (const LoraAdapters::Entry& e : adapters_.list())  // as vLLM lists them
        data.push_back({{"id", e.name},
                        {"object", "model"},
                        {"created", created_},
                        {"owned_by", "kiln"},
                        {"root", e.dir},
                        {"parent", o_.served_model_name},
                        {"max_model_len", ctx}});
      return ex->respond(
          {200, "application/json", json{{"object", "list"}, {"data", data}}.dump(), {}});
    }
    require(req, "POST");
    completions(chat ? Endpoint::chat : Endpoint::completions, req, ex);
  }

  // On an io thread: parse and check the body, then hand the request to the tokenize stage.
  void completions(Endpoint endpoint, HttpRequest& req, const std::shared_ptr<Exchange>& ex) {
    ApiLimits lim;
    lim.vocab_size = loop_.engine_info().config().vocab_size;
    lim.max_context = loop_.engine_info().max_context();
    lim.max_n = std::min(128, loop_.max_running());
    ApiRequest ar = parse_request(endpoint, req.body, lim);
    EngineAdapter adapter;  // the model field: the base (or not given), or a LoRA adapter
    if (!ar.model.empty() && ar.model != o_.served_model_name) {
      std::optional<EngineAdapter> a = adapters_.find(ar.model);
      if (!a) {
        std::string names = "'" + o_.served_model_name + "'";
        for (const LoraAdapters::Entry& e : adapters_.list()) names += ", '" + e.name + "'";
        throw ApiError(404,
                       "the model '" + ar.model + "' does not exist; this server serves " + names,
                       "model", "invalid_request_error", "model_not_found");
      }
      adapter = std::move(*a);
    }
    tokenize_.post([this, ex, lim, ar = std::move(ar), adapter = std::move(adapter)]() mutable {
      tokenize(ex, ar, lim, adapter);
    });
  }

  // On the tokenize stage: renders and tokenizes the prompts, then submits them to the engine
  // loop from the connection's strand.
  void tokenize(const std::shared_ptr<Exchange>& ex, ApiRequest& ar, const ApiLimits& lim,
                EngineAdapter& adapter) {
    const auto t0 = Clock::now();
    std::vector<std::vector<int32_t>> prompts;
    size_t bytes = 0;
    std::optional<ApiError> error;
    try {
      prompts = prepare_prompts(ar, loop_.tokenizer(), loop_.chat_template(), lim, &bytes);
    } catch (const ApiError& e) {
      error = e;
    } catch (const std::exception& e) {
      error = ApiError(500, e.what(), "", "internal_error");
    }
    const double s = seconds_since(t0);
    metrics_.tokenized_bytes(bytes);
    metrics_.tokenize_time(s);
    metrics_.stage(Stage::tokenize, s, 1);
    if (error) return ex->respond(error_response(*error));
    std::shared_ptr<Pending> p = make_pending(ar, prompts.size(), ex);
    // Submitted and answered on the connection's strand, so updates find the tickets in place.
    ex->post([this, p, ar = std::move(ar), prompts = std::move(prompts),
              adapter = std::move(adapter)]() mutable { submit(p, ar, prompts, adapter); });
  }

  std::shared_ptr<Pending> make_pending(const ApiRequest& ar, size_t prompts,
                                        const std::shared_ptr<Exchange>& ex) {
    auto p = std::make_shared<Pending>();
    p->ex = ex;
    p->loop = &loop_;
    p->meta.endpoint = ar.endpoint;
    p->meta.id = new_id(ar.endpoint == Endpoint::chat ? "chatcmpl-" : "cmpl-");
    p->meta.model = ar.model.empty() ? o_.served_model_name : ar.model;
    p->meta.created = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
    p->stream = ar.stream;
    p->include_usage = ar.include_usage;
    p->n = ar.sp.n;
    p->choices.resize(prompts * size_t(ar.sp.n));
    for (size_t i = 0; i < p->choices.size(); ++i) p->choices[i].index = int(i);
    p->tok = &loop_.tokenizer();
    p->logprobs = ar.sp.logprobs >= 0;
    for (Choice& c : p->choices) c.has_logprobs = p->logprobs;
    p->unsent.resize(p->choices.size());
    p->sent_chars.resize(p->choices.size());
    p->remaining = int(prompts);
    return p;
  }

  void submit(const std::shared_ptr<Pending>& p, const ApiRequest& ar,
              std::vector<std::vector<int32_t>>& prompts, const EngineAdapter& adapter) {
    for (size_t i = 0; i < prompts.size(); ++i) {
      Job job;
      job.prompt = std::move(prompts[i]);
      job.adapter = adapter;
      job.sp = ar.sp;
      if (ar.json_schema) job.sp.constraint = json_constraint_factory(ar.json_schema, vocab_trie());
      job.stop = ar.stop;
      job.stop.stop_strings.clear();  // applied after the engine, by the detokenize stage
      const int prompt = int(i);
      auto detok =
          std::make_shared<RequestDetokenizer>(loop_.tokenizer(), ar.stop.stop_strings, ar.sp.n);
      job.sink = [this, p, prompt, detok](EngineUpdate u) {
        detokenize_.post([this, p, prompt, detok, u = std::move(u)]() mutable {
          if (detok->failed) return;  // answered with an error already
          const auto t0 = Clock::now();
          try {
            if (detok->apply(u)) loop_.finish(u.ticket);
          } catch (const std::exception& e) {  // e.g. an id the model has but the tokenizer lacks
            detok->failed = true;
            loop_.cancel(u.ticket);
            u = EngineUpdate{u.ticket,
                             {},
                             std::nullopt,
                             std::string("the output could not be turned into text: ") + e.what()};
          }
          metrics_.stage(Stage::detokenize, seconds_since(t0), u.result ? 1 : 0);
          p->ex->post(
              [p, prompt, u = std::move(u)]() mutable { p->on_update(prompt, std::move(u)); });
        });
      };
      std::optional<uint64_t> t = loop_.submit(std::move(job));
      if (!t) {
        p->over = true;
        p->cancel_all();
        p->ex->respond(
            error_response(ApiError(429,
                                    "the server is at capacity (" + std::to_string(o_.max_queue) +
                                        " requests waiting); retry later",
                                    "", "rate_limit_error", "rate_limit_exceeded")));
        return;
      }
      p->tickets.push_back(*t);
    }
    std::weak_ptr<Pending> weak = p;
    p->ex->on_disconnect([weak] {
      if (auto q = weak.lock()) {
        q->over = true;
        q->cancel_all();
      }
    });
    if (p->stream) {
      p->ex->start_stream(200, "text/event-stream");
      if (p->meta.endpoint == Endpoint::chat)
        for (const Choice& c : p->choices)
          p->ex->write(
              chunk_event(p->meta, c.index, true, "", FinishReason::none, p->include_usage));
    }
  }

  // The vocabulary's trie for response_format masks, built by the first request that needs it.
  std::shared_ptr<const VocabTrie> vocab_trie() {
    std::call_once(trie_once_, [this] {
      trie_ = std::make_shared<const VocabTrie>(loop_.tokenizer(),
                                                loop_.engine_info().config().vocab_size);
    });
    return trie_;
  }

  std::string new_id(const char* prefix) {
    const uint64_t x = (id_salt_ + 0x9E3779B97F4A7C15ull * ++id_counter_) * 0xBF58476D1CE4E5B9ull;
    char buf[40];
    std::snprintf(buf, sizeof buf, "%s%016llx", prefix, (unsigned long long)(x ^ (x >> 31)));
    return buf;
  }

  ServeOptions o_;
  Metrics metrics_;
  HttpServer http_;
  WorkerPool detokenize_;  // after the engine (one thread: a request's updates stay in order)
  EngineLoop loop_;
  WorkerPool tokenize_;  // before the engine
  LoraAdapters adapters_;
  std::atomic<bool> ready_{false};  // the model and --lora's adapters loaded
  std::atomic<bool> draining_{false}, failed_{false};
  std::atomic<int> open_{0};
  bool aborted_ = false;
  Clock::time_point drain_deadline_;
  uint64_t id_salt_ = 0;
  std::once_flag trie_once_;
  std::shared_ptr<const VocabTrie> trie_;
  std::atomic<uint64_t> id_counter_{0};
  int64_t created_ = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
};

}  // namespace

int run_server(const ServeOptions& opts, ModelLoader load,
               const std::function<void(int port)>& on_listening) {
  Server s(opts, std::move(load));
  return s.run(on_listening);
}

}  // namespace kiln::serve

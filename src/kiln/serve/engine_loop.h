// The one thread that owns the Engine: it loads the model, then admits submitted jobs, applies
// cancellations and steps the engine while there is work, handing each request's events to its
// sink. Nothing else touches the engine; other threads only queue jobs, cancellations and
// finishes (a mutex held for a push, never across a step), so a slow client never stalls the
// batch. The served engine only runs the model: prompts come tokenized (the tokenize stage) and
// ids go out (the detokenize stage turns them into text and applies stop strings).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kiln/infer/engine.h"
#include "kiln/serve/metrics.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::serve {

// What the loader builds (on the engine thread, while /health answers 503).
struct ServedModel {
  std::shared_ptr<const void> owner;  // keeps the model, weights and tokenizer alive
  const Tokenizer* tok = nullptr;
  std::shared_ptr<const ChatTemplate> chat;  // the model's chat template (find_chat_template)
  std::unique_ptr<Engine> engine;
  int max_running = 1;          // the engine's EngineOptions::max_running
  const Model* base = nullptr;  // the model LoRA adapters load against (its config and layout)
};
using ModelLoader = std::function<ServedModel()>;

// What one engine step produced for one request.
struct EngineUpdate {
  uint64_t ticket = 0;  // the job's (EngineLoop::submit)
  std::vector<TokenEvent> events;
  std::optional<RequestResult> result;  // set once, when the request finished
  std::string error;                    // refused by the engine or aborted ("" = none)
};
// Called on the engine thread: must only hand the update off (post it), never block.
using Sink = std::function<void(EngineUpdate)>;

using Clock = std::chrono::steady_clock;

struct Job {
  std::vector<int32_t> prompt;
  SamplingParams sp;
  StopConditions stop;
  EngineAdapter adapter;  // the request's LoRA adapter, or none: the base
  Sink sink;
  Clock::time_point arrival = Clock::now();
};

class EngineLoop {
 public:
  enum class State { loading, ready, failed };
  // Starts the thread; it runs `load` first. max_queue: jobs allowed to wait for a free slot.
  EngineLoop(ModelLoader load, int max_queue, Metrics& metrics);
  ~EngineLoop();  // aborts what is left (sinks get an error) and joins
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  State state() const { return state_.load(); }
  std::string load_error() const;
  // Blocks until the model loaded or failed to.
  State wait_loaded() const;
  // Valid once state() == ready; immutable from then on, so any thread may read them.
  const Tokenizer& tokenizer() const { return *model_.tok; }
  const ChatTemplate& chat_template() const { return *model_.chat; }
  const Engine& engine_info() const { return *model_.engine; }  // config(), max_context() only
  const Model& base_model() const { return *model_.base; }
  int max_running() const { return model_.max_running; }

  // Queues a job from any thread; returns its ticket, or nullopt when the queue is full (429).
  std::optional<uint64_t> submit(Job job);
  // The job's request leaves the engine (KV blocks freed) before the next step; its sink gets
  // nothing more. Unknown or finished tickets are ignored.
  void cancel(uint64_t ticket);
  // The job's request ends now with what it generated (Engine::finish_now: a stop string found
  // after the engine); its sink gets the result. Unknown or finished tickets are ignored.
  void finish(uint64_t ticket);
  // Every job still queued or running gets `why` as an error and leaves the engine.
  void abort_all(const std::string& why);
  int in_flight() const { return in_flight_.load(); }  // submitted, not yet finished
  // Requests submitted and not yet admitted (or preempted, waiting to be recomputed) / running
  // in the engine; the preempted count is refreshed each loop iteration.
  int waiting() const { return waiting_.load() + preempted_.load(); }
  int running() const { return running_.load() - preempted_.load(); }

 private:
  struct Active;
  void run();
  void admit_jobs(std::vector<std::pair<uint64_t, Job>>& jobs);
  void step_engine();
  // Hands a request's update to its sink; with its result, the request leaves the loop.
  void deliver(int64_t id, EngineUpdate u, Clock::time_point now);
  void drop(int64_t id, const std::string& error);
  void leave(const Active& a);  // the request no longer waits or runs

  ModelLoader load_;
  const int max_queue_;
  Metrics& metrics_;
  ServedModel model_;
  std::atomic<State> state_{State::loading};
  std::string load_error_;

  mutable std::mutex mu_;  // guards the fields up to cv_
  mutable std::condition_variable cv_;
  std::vector<std::pair<uint64_t, Job>> pending_;
  std::vector<uint64_t> cancels_, finishes_;
  std::string abort_why_;
  bool abort_ = false, stop_ = false;
  uint64_t next_ticket_ = 1;

  std::atomic<int> in_flight_{0}, waiting_{0}, running_{0}, busy_slots_{0};
  std::atomic<int> preempted_{0};  // of running_: the engine's preempted requests now waiting
  // Engine thread only.
  std::unordered_map<int64_t, std::unique_ptr<Active>> active_;  // engine id -> job
  std::unordered_map<uint64_t, int64_t> by_ticket_;
  std::deque<int64_t> unadmitted_;  // engine ids not yet admitted, in order
  std::thread thread_;
};

}  // namespace kiln::serve

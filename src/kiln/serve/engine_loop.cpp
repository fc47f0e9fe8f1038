#include "kiln/serve/engine_loop.h"

#include <algorithm>

#include "kiln/core/log.h"

namespace kiln::serve {

struct EngineLoop::Active {
  uint64_t ticket = 0;
  Job job;
  bool admitted = false;
  bool any_token = false;
  Clock::time_point last_token;
};

namespace {
double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}
}  // namespace

EngineLoop::EngineLoop(ModelLoader load, int max_queue, Metrics& metrics)
    : load_(std::move(load)), max_queue_(max_queue), metrics_(metrics) {
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string EngineLoop::load_error() const {
  std::lock_guard<std::mutex> l(mu_);
  return load_error_;
}

EngineLoop::State EngineLoop::wait_loaded() const {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return state_.load() != State::loading; });
  return state_.load();
}

std::optional<uint64_t> EngineLoop::submit(Job job) {
  uint64_t t;
  {
    std::lock_guard<std::mutex> l(mu_);
    // Admission is FIFO: a job waits when the slots are taken; at most max_queue_ may wait.
    const int free_slots = std::max(0, model_.max_running - busy_slots_.load());
    if (waiting_.load() + job.sp.n > max_queue_ + free_slots) return std::nullopt;
    t = next_ticket_++;
    pending_.push_back({t, std::move(job)});
    ++in_flight_;
    ++waiting_;
  }
  cv_.notify_all();
  return t;
}

void EngineLoop::cancel(uint64_t ticket) {
  {
    std::lock_guard<std::mutex> l(mu_);
    cancels_.push_back(ticket);
  }
  cv_.notify_all();
}

void EngineLoop::finish(uint64_t ticket) {
  {
    std::lock_guard<std::mutex> l(mu_);
    finishes_.push_back(ticket);
  }
  cv_.notify_all();
}

void EngineLoop::abort_all(const std::string& why) {
  {
    std::lock_guard<std::mutex> l(mu_);
    abort_ = true;
    abort_why_ = why;
  }
  cv_.notify_all();
}

void EngineLoop::leave(const Active& a) {
  if (a.admitted) {
    --running_;
    busy_slots_ -= a.job.sp.n;
  } else {
    --waiting_;
  }
  --in_flight_;
}

void EngineLoop::drop(int64_t id, const std::string& error) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  model_.engine->cancel(id);
  leave(*it->second);
  metrics_.request_finished(0, 0, "abort");
  metrics_.stage(Stage::engine, 0, 1);
  if (!error.empty()) {
    EngineUpdate u;
    u.ticket = it->second->ticket;
    u.error = error;
    it->second->job.sink(std::move(u));
  }
  by_ticket_.erase(it->second->ticket);
  active_.erase(it);
}

void EngineLoop::admit_jobs(std::vector<std::pair<uint64_t, Job>>& jobs) {
  Engine& eng = *model_.engine;
  for (auto& [ticket, job] : jobs) {
    try {
      const int64_t id = eng.add_request(job.prompt, job.sp, job.stop, job.adapter);
      auto a = std::make_unique<Active>();
      a->ticket = ticket;
      a->job = std::move(job);
      by_ticket_[ticket] = id;
      active_[id] = std::move(a);
      unadmitted_.push_back(id);
    } catch (const std::exception& e) {  // checked before; a last line of defence
      EngineUpdate u;
      u.ticket = ticket;
      u.error = e.what();
      job.sink(std::move(u));
      --in_flight_;
      --waiting_;
    }
  }
}

void EngineLoop::step_engine() {
  Engine& eng = *model_.engine;
  const Clock::time_point t0 = Clock::now();
  std::vector<TokenEvent> events = eng.step();
  const Clock::time_point now = Clock::now();
  metrics_.engine_step(seconds(now - t0));
  // Requests admitted for the first time by this step (new ones are admitted in id order).
  const int64_t first_waiting = eng.admitted_below();
  while (!unadmitted_.empty() && unadmitted_.front() < first_waiting) {
    auto it = active_.find(unadmitted_.front());
    if (it != active_.end()) {
      it->second->admitted = true;
      --waiting_;
      ++running_;
      busy_slots_ += it->second->job.sp.n;
      metrics_.queue_time(seconds(now - it->second->job.arrival));
    }
    unadmitted_.pop_front();
  }
  // Group the events by request, keeping their order.
  std::unordered_map<int64_t, std::vector<TokenEvent>> by;
  std::vector<int64_t> order;
  for (TokenEvent& e : events) {
    auto& v = by[e.request];
    if (v.empty()) order.push_back(e.request);
    v.push_back(std::move(e));
  }
  for (int64_t id : order) {
    EngineUpdate u;
    u.events = std::move(by[id]);
    const bool finished = std::any_of(u.events.begin(), u.events.end(),
                                      [](const TokenEvent& e) { return e.finished; });
    if (finished) u.result = eng.take_result(id);
    deliver(id, std::move(u), now);
  }
}

void EngineLoop::deliver(int64_t id, EngineUpdate u, Clock::time_point now) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  Active& a = *it->second;
  u.ticket = a.ticket;
  int tokens = 0;
  for (const TokenEvent& e : u.events) tokens += int(e.tokens.size());
  if (tokens > 0) {
    metrics_.generated(tokens);
    if (!a.any_token) {
      metrics_.time_to_first_token(seconds(now - a.job.arrival));
    } else {
      metrics_.inter_token_latency(seconds(now - a.last_token));
    }
    a.any_token = true;
    a.last_token = now;
  }
  if (!u.result) return a.job.sink(std::move(u));
  const RequestResult& r = *u.result;
  metrics_.e2e_latency(seconds(now - a.job.arrival));
  const bool any_stop = std::any_of(r.samples.begin(), r.samples.end(),
                                    [](const auto& s) { return s.reason == FinishReason::stop; });
  metrics_.request_finished(r.prompt_tokens, r.cached_prompt_tokens, any_stop ? "stop" : "length");
  metrics_.stage(Stage::engine, 0, 1);
  Sink sink = std::move(a.job.sink);
  leave(a);
  by_ticket_.erase(a.ticket);
  active_.erase(it);
  sink(std::move(u));
}

void EngineLoop::run() {
  try {
    ServedModel m = load_();
    std::lock_guard<std::mutex> l(mu_);
    model_ = std::move(m);
    state_ = State::ready;
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> l(mu_);
    load_error_ = e.what();
    state_ = State::failed;
  }
  cv_.notify_all();
  if (state_ != State::ready) return;
  Engine& eng = *model_.engine;
  while (true) {
    std::vector<std::pair<uint64_t, Job>> jobs;
    std::vector<uint64_t> cancels, finishes;
    std::string abort_why;
    bool abort = false;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] {
        return stop_ || abort_ || !pending_.empty() || !cancels_.empty() || !finishes_.empty() ||
               !eng.idle();
      });
      if (stop_) {
        abort = true;
        abort_why = "the server is shutting down";
      }
      jobs.swap(pending_);
      cancels.swap(cancels_);
      finishes.swap(finishes_);
      if (abort_) {
        abort = true;
        abort_why = abort_why_;
        abort_ = false;
      }
    }
    admit_jobs(jobs);
    for (uint64_t t : cancels) {
      auto it = by_ticket_.find(t);
      if (it != by_ticket_.end()) drop(it->second, "");
    }
    for (uint64_t t : finishes) {
      auto it = by_ticket_.find(t);
      if (it == by_ticket_.end() || !eng.finish_now(it->second)) continue;
      EngineUpdate u;
      u.result = eng.take_result(it->second);
      deliver(it->second, std::move(u), Clock::now());
    }
    if (abort) {
      std::vector<int64_t> ids;
      for (auto& [id, a] : active_) ids.push_back(id);
      for (int64_t id : ids) drop(id, abort_why);
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) break;
    }
    if (!eng.idle()) {
      try {
        step_engine();
      } catch (const std::exception& e) {  // never expected: fail the requests, keep serving
        log_warn("[serve] engine step failed: ", e.what());
        std::vector<int64_t> ids;
        for (auto& [id, a] : active_) ids.push_back(id);
        for (int64_t id : ids) drop(id, std::string("internal engine error: ") + e.what());
      }
    }
    const KvCache& kv = eng.cache();
    metrics_.set_preemptions(eng.num_preemptions());
    preempted_ = eng.num_preempted_waiting();
    metrics_.set_kv_usage(1.0 - double(kv.free_blocks()) / double(std::max(1, kv.num_blocks())));
  }
}

}  // namespace kiln::serve

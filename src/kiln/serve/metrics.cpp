#include "kiln/serve/metrics.h"

#include <cstdio>
#include <cstdlib>

namespace kiln::serve {

namespace {

// The shortest decimal that reads back as v ("0.1", not "0.10000000000000001").
std::string num(double v) {
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

void line(std::string& out, const std::string& name, const char* type, const std::string& help,
          const std::string& labels, double v) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  out += name + "{" + labels + "} " + num(v) + "\n";
}

// vLLM's buckets for request-scale and token-scale latencies.
std::vector<double> request_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}
std::vector<double> token_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.15, 0.2,  0.3,
          0.4,   0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += v;
  ++count_;
}

void Histogram::render(const std::string& name, const std::string& help, const std::string& labels,
                       std::string& out) const {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out +=
        name + "_bucket{" + labels + ",le=\"" + num(bounds_[i]) + "\"} " + num(double(cum)) + "\n";
  }
  out += name + "_bucket{" + labels + ",le=\"+Inf\"} " + num(double(count_)) + "\n";
  out += name + "_sum{" + labels + "} " + num(sum_) + "\n";
  out += name + "_count{" + labels + "} " + num(double(count_)) + "\n";
}

Metrics::Metrics(std::string model_name)
    : labels_("model_name=\"" + model_name + "\""),
      ttft_(token_buckets()),
      itl_(token_buckets()),
      e2e_(request_buckets()),
      queue_(request_buckets()),
      tokenize_(token_buckets()) {}

void Metrics::set_request_gauges(std::function<int()> running, std::function<int()> waiting) {
  std::lock_guard<std::mutex> l(mu_);
  running_ = std::move(running);
  waiting_ = std::move(waiting);
}
void Metrics::set_preemptions(int64_t total) {
  std::lock_guard<std::mutex> l(mu_);
  preemptions_ = total;
}
void Metrics::set_kv_usage(double fraction) {
  std::lock_guard<std::mutex> l(mu_);
  kv_usage_ = fraction;
}
void Metrics::request_finished(int prompt_tokens, int cached_tokens, const std::string& reason) {
  std::lock_guard<std::mutex> l(mu_);
  prompt_tokens_ += uint64_t(prompt_tokens);
  cached_tokens_ += uint64_t(cached_tokens);
  (reason == "stop" ? finished_stop_ : reason == "length" ? finished_length_ : finished_abort_)++;
}
void Metrics::generated(int tokens) {
  std::lock_guard<std::mutex> l(mu_);
  generation_tokens_ += uint64_t(tokens);
}
void Metrics::time_to_first_token(double s) {
  std::lock_guard<std::mutex> l(mu_);
  ttft_.observe(s);
}
void Metrics::inter_token_latency(double s) {
  std::lock_guard<std::mutex> l(mu_);
  itl_.observe(s);
}
void Metrics::e2e_latency(double s) {
  std::lock_guard<std::mutex> l(mu_);
  e2e_.observe(s);
}
void Metrics::queue_time(double s) {
  std::lock_guard<std::mutex> l(mu_);
  queue_.observe(s);
}
void Metrics::tokenize_time(double s) {
  std::lock_guard<std::mutex> l(mu_);
  tokenize_.observe(s);
}
void Metrics::stage(Stage s, double seconds, int requests) {
  std::lock_guard<std::mutex> l(mu_);
  stage_seconds_[int(s)] += seconds;
  stage_requests_[int(s)] += uint64_t(requests);
}
void Metrics::engine_step(double seconds) {
  std::lock_guard<std::mutex> l(mu_);
  stage_seconds_[int(Stage::engine)] += seconds;
  ++engine_steps_;
}
void Metrics::tokenized_bytes(uint64_t bytes) {
  std::lock_guard<std::mutex> l(mu_);
  tokenized_bytes_ += bytes;
}
void Metrics::http_request(int status) {
  std::lock_guard<std::mutex> l(mu_);
  (status < 400 ? http_2xx_ : status < 500 ? http_4xx_ : http_5xx_)++;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> l(mu_);
  std::string o;
  const std::string& L = labels_;
  line(o, "kiln:num_requests_running", "gauge", "Requests in the running batch.", L,
       running_ ? running_() : 0);
  line(o, "kiln:num_requests_waiting", "gauge", "Requests waiting to be admitted.", L,
       waiting_ ? waiting_() : 0);
  line(o, "kiln:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (1 = full).", L,
       kv_usage_);
  line(o, "kiln:num_preemptions_total", "counter",
       "Requests preempted (KV blocks freed; recomputed later).", L, double(preemptions_));
  line(o, "kiln:prompt_tokens_total", "counter", "Prompt tokens of finished requests.", L,
       double(prompt_tokens_));
  line(o, "kiln:generation_tokens_total", "counter", "Generated tokens.", L,
       double(generation_tokens_));
  line(o, "kiln:prefix_cache_hits_total", "counter", "Prompt tokens served from the prefix cache.",
       L, double(cached_tokens_));
  o += "# HELP kiln:request_success_total Finished requests by finish reason.\n"
       "# TYPE kiln:request_success_total counter\n";
  o += "kiln:request_success_total{" + L + ",finished_reason=\"stop\"} " +
       num(double(finished_stop_)) + "\n";
  o += "kiln:request_success_total{" + L + ",finished_reason=\"length\"} " +
       num(double(finished_length_)) + "\n";
  o += "kiln:request_success_total{" + L + ",finished_reason=\"abort\"} " +
       num(double(finished_abort_)) + "\n";
  o += "# HELP kiln:http_requests_total HTTP responses by status class.\n"
       "# TYPE kiln:http_requests_total counter\n";
  o += "kiln:http_requests_total{" + L + ",status=\"2xx\"} " + num(double(http_2xx_)) + "\n";
  o += "kiln:http_requests_total{" + L + ",status=\"4xx\"} " + num(double(http_4xx_)) + "\n";
  o += "kiln:http_requests_total{" + L + ",status=\"5xx\"} " + num(double(http_5xx_)) + "\n";
  ttft_.render("kiln:time_to_first_token_seconds", "Time to first token.", L, o);
  itl_.render("kiln:inter_token_latency_seconds", "Time between tokens of a stream.", L, o);
  e2e_.render("kiln:e2e_request_latency_seconds", "Request latency, arrival to last token.", L, o);
  queue_.render("kiln:request_queue_time_seconds", "Time waiting before admission.", L, o);
  tokenize_.render("kiln:request_tokenize_time_seconds",
                   "Chat rendering and tokenization, before the engine.", L, o);
  const char* names[kStages] = {"http", "tokenize", "engine", "detokenize"};
  auto per_stage = [&](const char* name, const char* help, auto value) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
    for (int i = 0; i < kStages; ++i)
      o += std::string(name) + "{" + L + ",stage=\"" + names[i] + "\"} " + num(value(i)) + "\n";
  };
  per_stage("kiln:stage_seconds_total",
            "Seconds spent in each pipeline stage: http (io threads: parse, route), tokenize "
            "(chat template, tokenizer), engine (model steps), detokenize (text, stop strings).",
            [&](int i) { return stage_seconds_[i]; });
  per_stage("kiln:stage_requests_total", "Requests each pipeline stage finished.",
            [&](int i) { return double(stage_requests_[i]); });
  line(o, "kiln:engine_steps_total", "counter", "Engine steps (one forward pass each).", L,
       double(engine_steps_));
  line(o, "kiln:tokenized_bytes_total", "counter", "Prompt text bytes the tokenize stage encoded.",
       L, double(tokenized_bytes_));
  return o;
}

}  // namespace kiln::serve

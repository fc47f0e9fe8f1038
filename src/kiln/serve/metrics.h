// Serving metrics in Prometheus text format, named as vLLM names them with the "kiln:" prefix
// (kiln:num_requests_running, kiln:time_to_first_token_seconds, ...). Thread-safe: the engine
// loop records, the /metrics handler renders.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::serve {

// A cumulative histogram with fixed upper bounds (Prometheus "le" buckets, +Inf implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Appends "# HELP/# TYPE" and the _bucket/_sum/_count lines with `labels` ("k=\"v\"").
  void render(const std::string& name, const std::string& help, const std::string& labels,
              std::string& out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative; last = above every bound
  double sum_ = 0;
  uint64_t count_ = 0;
};

// The serving pipeline's stages, each on its own threads: the HTTP io threads (parse, route,
// answer), tokenize (chat template + tokenizer), the engine loop (model steps only), detokenize
// (text and stop strings).
enum class Stage { http, tokenize, engine, detokenize };
constexpr int kStages = 4;

class Metrics {
 public:
  explicit Metrics(std::string model_name);
  // Where the request gauges are read at render time (the engine loop's exact counts).
  void set_request_gauges(std::function<int()> running, std::function<int()> waiting);
  void set_kv_usage(double fraction);   // KV blocks referenced, 0..1, after each engine step
  void set_preemptions(int64_t total);  // the engine's count, after each engine step
  void request_finished(int prompt_tokens, int cached_tokens, const std::string& reason);
  void generated(int tokens);
  void time_to_first_token(double s);
  void inter_token_latency(double s);
  void e2e_latency(double s);
  void queue_time(double s);
  void tokenize_time(double s);  // the stage before the engine (render + tokenize)
  // Seconds spent in a stage and the requests it finished there (0 for part of one's work).
  void stage(Stage s, double seconds, int requests);
  void engine_step(double seconds);      // one Engine::step (also the engine stage's time)
  void tokenized_bytes(uint64_t bytes);  // text bytes the tokenize stage encoded
  void http_request(int status);
  std::string render() const;

 private:
  mutable std::mutex mu_;
  std::string labels_;
  std::function<int()> running_, waiting_;
  double kv_usage_ = 0;
  int64_t preemptions_ = 0;
  uint64_t prompt_tokens_ = 0, generation_tokens_ = 0, cached_tokens_ = 0;
  uint64_t finished_stop_ = 0, finished_length_ = 0, finished_abort_ = 0;
  uint64_t http_2xx_ = 0, http_4xx_ = 0, http_5xx_ = 0;
  double stage_seconds_[kStages] = {};
  uint64_t stage_requests_[kStages] = {};
  uint64_t engine_steps_ = 0, tokenized_bytes_ = 0;
  Histogram ttft_, itl_, e2e_, queue_, tokenize_;
};

}  // namespace kiln::serve

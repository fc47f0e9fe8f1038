// The batched inference engine (both families): requests come in with add_request(); each step()
// runs ONE forward pass (forward_pass.h) over every running sequence: the decode tokens first, then
// prompt chunks (vLLM's chunked prefill) up to a token budget. All rows go through each projection
// as one GEMM; attention reads each sequence's blocks of the paged KV cache directly. A sequence's
// greedy output does not depend on what else is in the batch. model/decoder.h is the oracle.
// A request is admitted when its prompt's blocks (plus a block per sequence) are free; when a
// running sequence needs a block and none is free, the newest running request is preempted
// (vLLM's RECOMPUTE): its blocks are freed and it waits at the front of the queue with its
// generated tokens kept, to be recomputed (prefix caching makes that cheap) and continued with
// its sampler, penalties and stop state untouched, so its output is what it would have been.
// Sampling, penalties, n samples, beams and stop strings live here, above the forward pass, so
// every family and backend gets all of them.
//
//   Engine eng(model, opts, &tok);
//   auto id = eng.add_request(ids, sampling, stop);
//   while (!eng.idle()) for (auto& ev : eng.step()) ...;   // or eng.run_all()
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/infer/forward_pass.h"
#include "kiln/infer/kv_cache.h"
#include "kiln/infer/sampler.h"
#include "kiln/infer/stop_strings.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct StopConditions {
  int max_tokens = 128;                   // generated tokens at most
  std::vector<int32_t> stop_ids;          // finish when sampled (not part of the output)
  std::vector<std::string> stop_strings;  // cut exactly before; needs the engine's tokenizer
  bool ignore_eos = false;                // keep going past the eos token
};

enum class FinishReason { none, stop, length };
const char* finish_reason_name(FinishReason r);  // "stop", "length"

// A LoRA adapter a request decodes with: its weights over the engine's base (LoraWeights built
// against the same model) and its prefix-cache salt, unique per loaded adapter and never 0 (the
// base's), which keeps its K/V blocks apart from the base's and other adapters' (kv_cache.h).
// Requests hold the weights while they run, so an adapter unloaded meanwhile stays valid for them.
struct EngineAdapter {
  std::shared_ptr<const LoraWeights> weights;
  uint64_t salt = 0;
};

struct EngineOptions {
  int max_context = 0;     // positions per sequence; 0 = the model's max_position_embeddings
  int token_budget = 512;  // rows per step (decode tokens + prefill chunks)
  int max_running = 64;    // sequences in flight (n > 1 samples and beams count each)
  int cache_blocks = 0;    // KV blocks; 0 = fit max_running full contexts within 1 GiB
  bool prefix_caching = true;
  bool return_logits = false;  // fill TokenEvent::logits (tests, debugging)
  // Text and stop strings in the engine (TokenEvent::text, SampleResult::text). Off: ids only,
  // for a caller that detokenizes after the engine (kiln serve's detokenize stage).
  bool detokenize = true;
};

// A sampled token's log probability and the most likely alternatives' (SamplingParams::logprobs),
// under the model's raw distribution: log-softmax of the logits before logit bias, penalties,
// temperature and filters (vLLM's default, "raw_logprobs"; OpenAI's shape).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // (token, logprob), most likely first
};

// What one step produced for one sample of a request.
struct TokenEvent {
  int64_t request = 0;
  int sample = 0;               // 0..n-1; for beam search the rank of a finished hypothesis
  std::vector<int32_t> tokens;  // new output tokens (empty when a stop id/eos ended it)
  std::string text;             // new text, safe to show (held back while it may be a stop)
  bool finished = false;
  FinishReason reason = FinishReason::none;
  std::vector<float> logits;           // (V) that chose the token, when return_logits
  std::vector<TokenLogprob> logprobs;  // one per token in `tokens`, when sp.logprobs >= 0
};

struct SampleResult {
  std::vector<int32_t> tokens;  // generated ids (no stop id / eos)
  std::string text;             // their text, cut at a stop string (empty without a tokenizer)
  FinishReason reason = FinishReason::none;
  double logprob = 0;  // sum of log p of the tokens under the raw model distribution
  double score = 0;    // beam search: logprob / len ^ length_penalty; else logprob
};

struct RequestResult {
  int64_t id = 0;
  int prompt_tokens = 0, cached_prompt_tokens = 0;
  std::vector<SampleResult> samples;  // n samples in order, or beams best first
};

class Engine {
 public:
  Engine(const Model& model, const EngineOptions& opts = {}, const Tokenizer* tok = nullptr);
  Engine(const ModelConfig& cfg, ForwardWeights weights, const EngineOptions& opts = {},
         const Tokenizer* tok = nullptr);
  // With a given forward pass (e.g. the GPU's), built for up to context_length(cfg, opts).
  Engine(const ModelConfig& cfg, std::unique_ptr<ForwardPass> pass, const EngineOptions& opts = {},
         const Tokenizer* tok = nullptr);
  ~Engine();

  // Queues a request. Throws Error naming the problem for an empty or too-long prompt, ids
  // outside the vocabulary, out-of-range sampling parameters, or stop strings without a
  // tokenizer.
  int64_t add_request(std::vector<int32_t> prompt, const SamplingParams& sp,
                      const StopConditions& stop = {}, EngineAdapter adapter = {});
  // One iteration; returns what it produced (streamed tokens and finished samples).
  std::vector<TokenEvent> step();
  bool idle() const { return waiting_.empty() && running_.empty(); }
  // A finished request's results, once; nullopt while it runs.
  std::optional<RequestResult> take_result(int64_t id);
  // Steps until idle; returns every finished request's results in id order.
  std::vector<RequestResult> run_all();
  // Drops a waiting, running or finished-but-untaken request: its sequences' KV blocks are
  // released at once; it produces no more events or result.
  // Returns false for an unknown id. O(requests).
  bool cancel(int64_t id);
  // Ends a waiting or running request now, as a stop string found after the engine does: its
  // live samples finish with reason stop and the tokens they have, their KV blocks are
  // released, and its result is ready for take_result. Returns false for an unknown or
  // finished id. O(requests).
  bool finish_now(int64_t id);
  int num_waiting() const { return int(waiting_.size()); }  // requests queued, in id order
  int num_running() const { return int(running_.size()); }  // requests admitted
  // Every request with a lower id has been admitted at least once (new requests are admitted
  // in id order; preempted ones wait ahead of them).
  int64_t admitted_below() const { return admitted_below_; }
  int64_t num_preemptions() const { return preemptions_; }          // since construction
  int num_preempted_waiting() const { return preempted_waiting_; }  // of num_waiting()

  const KvCache& cache() const { return *cache_; }
  const ModelConfig& config() const { return cfg_; }
  int max_context() const { return max_ctx_; }

 private:
  struct Seq;
  struct Request;
  struct Chunk {  // rows start..start+count-1 of s's tokens in this step's forward pass
    Seq* s;
    int start, count;
  };
  void admit();  // moves waiting requests in while slots and KV blocks allow
  // Makes n rows of s writable, preempting the newest running requests while blocks are short.
  // Returns false when s's own request was preempted.
  bool make_room(Seq& s, int n, std::vector<Chunk>& chunks, int& budget);
  void preempt_newest(std::vector<Chunk>& chunks, int& budget);
  void finish_seq(Seq& s, FinishReason r, std::vector<TokenEvent>& ev);
  void sample_seq(Seq& s, const float* logits, std::vector<TokenEvent>& ev);
  void beam_step(Request& r, const std::vector<std::pair<Seq*, const float*>>& beams,
                 std::vector<TokenEvent>& ev);
  void finish_request(Request& r);
  Seq* new_seq(Request& r, int sample);
  Seq* fork_seq(Seq& parent, int sample);

  ModelConfig cfg_;
  std::unique_ptr<ForwardPass> pass_;
  EngineOptions opts_;
  const Tokenizer* tok_;
  int max_ctx_;
  std::unique_ptr<KvCache> cache_;
  int64_t next_id_ = 0;
  int64_t admitted_below_ = 0, preemptions_ = 0;
  int preempted_waiting_ = 0;
  std::deque<std::unique_ptr<Request>> waiting_;
  std::vector<std::unique_ptr<Request>> running_;
  std::vector<RequestResult> done_;
};

// Positions per sequence an engine with these options holds: opts.max_context, at most (and by
// default) the model's max_position_embeddings.
int context_length(const ModelConfig& cfg, const EngineOptions& opts);

}  // namespace kiln

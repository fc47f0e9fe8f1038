#include "kiln/infer/engine.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/error.h"
#include "kiln/ops/cpu/vec16.h"

namespace kiln {

struct Engine::Seq {
  Request* req = nullptr;
  int sample = 0;
  KvCache::SeqId kv = -1;
  std::vector<int32_t> tokens;  // prompt + generated
  int computed = 0;             // tokens whose K/V are in the cache
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<LogitsConstraint> constraint;  // from sp.constraint; null = unconstrained
  PenaltyState pen;
  std::unique_ptr<TextStream> text;  // null when the engine does not detokenize
  SampleResult out;
  bool finished = false;
  int generated() const;
};

struct Engine::Request {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingParams sp;
  StopConditions stop;
  EngineAdapter adapter;
  int width = 1;  // sequences it may hold at once: n, or beams
  int worst = 0;  // KV blocks it may hold at once, at most (checked against the cache)
  int cached = 0;
  bool forked = false;                     // n > 1: the samples were forked off the prompt
  bool preempted = false;                  // waiting again, to be recomputed
  std::vector<std::unique_ptr<Seq>> seqs;  // live
  std::vector<std::pair<int, SampleResult>> finished;  // (sample, result)
  std::vector<SampleResult> hyps;                      // beam search: best first, at most `width`
  bool done = false;
};

int Engine::Seq::generated() const {
  return int(tokens.size()) - int(req->prompt.size());
}

const char* finish_reason_name(FinishReason r) {
  return r == FinishReason::stop ? "stop" : r == FinishReason::length ? "length" : "none";
}

int context_length(const ModelConfig& cfg, const EngineOptions& opts) {
  KILN_CHECK(opts.max_context >= 0, "engine", "max_context must be >= 0, got ", opts.max_context);
  return opts.max_context > 0 ? std::min(opts.max_context, cfg.max_positions) : cfg.max_positions;
}

Engine::Engine(const Model& model, const EngineOptions& opts, const Tokenizer* tok)
    : Engine(model.config(), fp32_weights(model), opts, tok) {}

Engine::Engine(const ModelConfig& cfg, ForwardWeights weights, const EngineOptions& opts,
               const Tokenizer* tok)
    : Engine(cfg, make_cpu_forward_pass(cfg, std::move(weights), context_length(cfg, opts)), opts,
             tok) {}

Engine::Engine(const ModelConfig& cfg, std::unique_ptr<ForwardPass> pass, const EngineOptions& opts,
               const Tokenizer* tok)
    : cfg_(cfg), pass_(std::move(pass)), opts_(opts), tok_(tok) {
  max_ctx_ = context_length(cfg, opts);
  KILN_CHECK(opts.max_running >= 1, "engine", "max_running must be >= 1, got ", opts.max_running);
  KILN_CHECK(opts.token_budget >= opts.max_running, "engine", "token_budget (", opts.token_budget,
             ") must be >= max_running (", opts.max_running,
             ") so every running sequence decodes each step");
  const int KD = cfg.kv_heads * cfg.head_dim;
  const int64_t block_bytes = int64_t(cfg.layers) * 2 * kBlockTokens * KD * 4;
  const int ctx_blocks = (max_ctx_ + kBlockTokens - 1) / kBlockTokens;
  int blocks = opts.cache_blocks;
  if (blocks <= 0) {
    // Enough for the worst-case reservations of max_running full-context sequences.
    const int64_t want = int64_t(opts.max_running) * (ctx_blocks + 1) + 1;
    const int64_t cap = (int64_t(1) << 30) / block_bytes;
    blocks = int(std::max<int64_t>(std::min(want, cap), ctx_blocks + 2));
  }
  cache_ = std::make_unique<KvCache>(KvCacheShape{cfg.layers, KD, blocks, pass_->uses_host_pool()});
  if (!pass_->uses_host_pool())
    cache_->set_copy_hook([p = pass_.get()](int src, int dst) { p->copy_block(src, dst); });
}

Engine::~Engine() = default;

int64_t Engine::add_request(std::vector<int32_t> prompt, const SamplingParams& sp,
                            const StopConditions& stop, EngineAdapter adapter) {
  const int V = cfg_.vocab_size;
  validate(sp, V);
  KILN_CHECK(!prompt.empty(), "engine", "the prompt is empty: give at least one token");
  for (int32_t t : prompt)
    KILN_CHECK(t >= 0 && t < V, "engine", "prompt token id ", t, " is outside the vocabulary of ",
               V);
  KILN_CHECK(int(prompt.size()) < max_ctx_, "engine", "the prompt has ", prompt.size(),
             " tokens but the context holds ", max_ctx_, "; shorten the prompt");
  KILN_CHECK(stop.max_tokens >= 1, "engine", "max_tokens must be >= 1, got ", stop.max_tokens);
  KILN_CHECK(!sp.constraint || sp.beams == 1, "engine",
             "a logits constraint (grammar) and beam search together are not supported");
  KILN_CHECK(stop.stop_strings.empty() || tok_, "engine",
             "stop strings need a tokenizer; this engine has none");
  KILN_CHECK(stop.stop_strings.empty() || opts_.detokenize, "engine",
             "stop strings need an engine that detokenizes (EngineOptions::detokenize); apply "
             "them after the engine instead");
  for (int32_t t : stop.stop_ids)
    KILN_CHECK(t >= 0 && t < V, "engine", "stop id ", t, " is outside the vocabulary of ", V);
  KILN_CHECK(!adapter.weights || adapter.salt != 0, "engine",
             "a LoRA adapter needs a prefix-cache salt other than 0 (the base's)");
  auto r = std::make_unique<Request>();
  r->adapter = std::move(adapter);
  r->id = next_id_++;
  r->sp = sp;
  r->stop = stop;
  r->stop.max_tokens = std::min(stop.max_tokens, max_ctx_ - int(prompt.size()));
  r->width = std::max(sp.n, sp.beams);
  KILN_CHECK(r->width <= opts_.max_running, "engine", "n or beams = ", r->width,
             " exceeds max_running = ", opts_.max_running);
  auto blocks = [](int tokens) { return (tokens + kBlockTokens - 1) / kBlockTokens; };
  // Alone in the cache it must fit, or preemption could never make room for it.
  r->worst = blocks(int(prompt.size()) + r->stop.max_tokens) +
             (r->width - 1) * (blocks(r->stop.max_tokens) + 1) + 1;
  KILN_CHECK(r->worst <= cache_->num_blocks(), "engine", "the request needs up to ", r->worst,
             " KV blocks but the cache has ", cache_->num_blocks(),
             "; lower max_tokens / n / beams or raise cache_blocks");
  r->prompt = std::move(prompt);
  const int64_t id = r->id;
  waiting_.push_back(std::move(r));
  return id;
}

Engine::Seq* Engine::new_seq(Request& r, int sample) {
  auto s = std::make_unique<Seq>();
  s->req = &r;
  s->sample = sample;
  s->kv = cache_->create(r.adapter.salt);
  s->tokens = r.prompt;
  s->pen.prompt = r.prompt;
  if (r.sp.beams == 1) s->sampler = std::make_unique<Sampler>(r.sp, uint64_t(sample));
  if (r.sp.constraint) s->constraint = r.sp.constraint();
  if (tok_ && opts_.detokenize) s->text = std::make_unique<TextStream>(*tok_, r.stop.stop_strings);
  r.seqs.push_back(std::move(s));
  return r.seqs.back().get();
}

Engine::Seq* Engine::fork_seq(Seq& p, int sample) {
  Request& r = *p.req;
  auto s = std::make_unique<Seq>();
  s->req = &r;
  s->sample = sample;
  s->kv = cache_->fork(p.kv);
  s->tokens = p.tokens;
  s->computed = p.computed;
  s->pen = p.pen;
  if (r.sp.beams == 1) s->sampler = std::make_unique<Sampler>(r.sp, uint64_t(sample));
  // Only n > 1 samples fork with a constraint, before their first token: a fresh one fits.
  if (r.sp.constraint) s->constraint = r.sp.constraint();
  if (tok_ && opts_.detokenize) s->text = std::make_unique<TextStream>(*tok_, r.stop.stop_strings);
  s->out = p.out;
  r.seqs.push_back(std::move(s));
  return r.seqs.back().get();
}

void Engine::admit() {
  auto blocks = [](size_t tokens) { return int((tokens + kBlockTokens - 1) / kBlockTokens); };
  int slots = 0;
  for (const auto& r : running_) slots += r->width;
  while (!waiting_.empty()) {
    Request& r = *waiting_.front();
    if (slots + r.width > opts_.max_running) break;
    // What it computes now plus one block per sequence to decode into (cached prefixes are not
    // subtracted: a conservative, O(1) test). Alone it always fits (add_request checked).
    int need = 0;
    if (r.seqs.empty()) need = blocks(r.prompt.size()) + r.width;
    for (const auto& s : r.seqs) need += blocks(s->tokens.size()) + 1;
    if (!running_.empty() && need > cache_->free_blocks()) break;
    slots += r.width;
    if (r.preempted) --preempted_waiting_;
    r.preempted = false;
    // At least the last token is computed here: its logits continue the generation.
    if (r.seqs.empty()) {
      Seq* s = new_seq(r, 0);
      if (opts_.prefix_caching)
        s->computed = cache_->attach_prefix(s->kv, r.prompt, int(r.prompt.size()) - 1);
      r.cached = s->computed;
      admitted_below_ = std::max(admitted_below_, r.id + 1);
    } else {  // preempted: recompute prompt + generated tokens, sampler and stop state kept
      for (auto& s : r.seqs) {
        s->kv = cache_->create(r.adapter.salt);
        if (opts_.prefix_caching)
          s->computed = cache_->attach_prefix(s->kv, s->tokens, int(s->tokens.size()) - 1);
      }
    }
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

void Engine::preempt_newest(std::vector<Chunk>& chunks, int& budget) {
  std::unique_ptr<Request> victim = std::move(running_.back());
  running_.pop_back();
  Request& r = *victim;
  for (const Chunk& c : chunks)
    if (c.s->req == &r) budget += c.count;
  chunks.erase(
      std::remove_if(chunks.begin(), chunks.end(), [&](const Chunk& c) { return c.s->req == &r; }),
      chunks.end());
  for (auto& s : r.seqs) {
    cache_->release(s->kv);
    s->kv = -1;
    s->computed = 0;
  }
  // Beams share blocks and must step together; beam search has no randomness and streams
  // nothing before it ends, so it restarts from its prompt and finds the same beams.
  if (r.sp.beams > 1) {
    r.seqs.clear();
    r.hyps.clear();
    r.finished.clear();
  }
  ++preemptions_;
  ++preempted_waiting_;
  r.preempted = true;
  waiting_.push_front(std::move(victim));
}

bool Engine::make_room(Seq& s, int n, std::vector<Chunk>& chunks, int& budget) {
  while (cache_->blocks_to_append(s.kv, n) > cache_->free_blocks()) {
    const bool self = running_.back().get() == s.req;
    KILN_CHECK(!self || running_.size() > 1, "engine", "request ", s.req->id,
               " alone needs more KV blocks than the cache has (an internal accounting bug)");
    preempt_newest(chunks, budget);
    if (self) return false;
  }
  cache_->prepare_append(s.kv, n);
  return true;
}

std::vector<TokenEvent> Engine::step() {
  std::vector<TokenEvent> ev;
  admit();
  int budget = opts_.token_budget;
  // Schedule: every decoding sequence one row, then prompt (or recompute) chunks in arrival
  // order. Making room may preempt the newest requests (the back of running_), so index loops.
  std::vector<Chunk> chunks;
  auto decoding = [](const Seq& s) {
    return s.computed >= int(s.req->prompt.size()) && int(s.tokens.size()) - s.computed == 1;
  };
  for (int pass = 0; pass < 2; ++pass)
    for (size_t i = 0; i < running_.size(); ++i) {
      Request& r = *running_[i];
      for (size_t j = 0; j < r.seqs.size() && budget > 0; ++j) {
        Seq& s = *r.seqs[j];
        if (decoding(s) != (pass == 0)) continue;
        const int n = std::min<int>(budget, int(s.tokens.size()) - s.computed);
        if (!make_room(s, n, chunks, budget)) break;
        chunks.push_back({&s, s.computed, n});
        budget -= n;
      }
    }
  if (chunks.empty()) return ev;

  std::vector<int32_t> ids;
  std::vector<int> pos, logit_rows;
  std::vector<KvCache::SeqId> row_seq;
  std::vector<const LoraWeights*> row_adapter;
  bool adapted = false;
  std::vector<Seq*> logit_seq;
  for (const Chunk& c : chunks) {
    const LoraWeights* ad = c.s->req->adapter.weights.get();
    adapted |= ad != nullptr;
    for (int j = 0; j < c.count; ++j) {
      ids.push_back(c.s->tokens[c.start + j]);
      pos.push_back(c.start + j);
      row_seq.push_back(c.s->kv);
      row_adapter.push_back(ad);
    }
    if (c.start + c.count == int(c.s->tokens.size())) {
      logit_rows.push_back(int(ids.size()) - 1);
      logit_seq.push_back(c.s);
    }
  }
  std::vector<float> logits;
  ForwardBatch batch{ids, pos, row_seq, logit_rows};
  if (adapted) batch.adapter = row_adapter;
  pass_->forward(batch, *cache_, logits);
  for (const Chunk& c : chunks) {
    cache_->commit(c.s->kv, &c.s->tokens[c.start], c.count);
    c.s->computed += c.count;
  }

  // Sample, request by request (beams and forks need all of a request's sequences at once).
  const int V = cfg_.vocab_size;
  for (auto& rp : running_) {
    Request& r = *rp;
    std::vector<std::pair<Seq*, const float*>> mine;
    for (size_t i = 0; i < logit_seq.size(); ++i)
      if (logit_seq[i]->req == &r) mine.push_back({logit_seq[i], &logits[i * size_t(V)]});
    if (mine.empty()) continue;
    if (r.sp.beams > 1) {
      beam_step(r, mine, ev);
      continue;
    }
    if (r.sp.n > 1 && !r.forked) {  // the prompt is done: the samples share its blocks
      r.forked = true;
      Seq* first = mine[0].first;
      const float* l = mine[0].second;
      for (int i = 1; i < r.sp.n; ++i) mine.push_back({fork_seq(*first, i), l});
    }
    for (auto& [s, l] : mine) sample_seq(*s, l, ev);
  }
  // Drop finished sequences and requests.
  for (auto& rp : running_) {
    auto& seqs = rp->seqs;
    seqs.erase(std::remove_if(seqs.begin(), seqs.end(), [](const auto& s) { return s->finished; }),
               seqs.end());
    if (seqs.empty()) finish_request(*rp);
  }
  running_.erase(
      std::remove_if(running_.begin(), running_.end(), [](const auto& r) { return r->done; }),
      running_.end());
  return ev;
}

namespace {

// sum_i e^(logits[i] - mx), 16 lanes at a time (vec::expv, ~2 ulp) summed in double: every
// sampled token of every sequence pays this over the whole vocabulary.
double sum_exp(const float* logits, int V, float mx) {
  using namespace ops::cpu::vec;
  double sum = 0;
  int i = 0;
  for (; i + kL <= V; i += kL) {
    const v16 e = expv(load(logits + i) - mx);
    sum += double(hsum(e));
  }
  for (; i < V; ++i) sum += std::exp(double(logits[i] - mx));
  return sum;
}

double log_prob(const float* logits, int V, int32_t t) {
  float mx = *std::max_element(logits, logits + V);
  return double(logits[t] - mx) - std::log(sum_exp(logits, V, mx));
}

// Token t's log p and the k most likely tokens' (ties: lower id first), in O(V log k).
TokenLogprob token_logprob(const float* logits, int V, int32_t t, int k) {
  const float mx = *std::max_element(logits, logits + V);
  const double lse = mx + std::log(sum_exp(logits, V, mx));
  TokenLogprob lp;
  lp.token = t;
  lp.logprob = float(double(logits[t]) - lse);
  std::vector<int32_t> idx(V);
  for (int i = 0; i < V; ++i) idx[i] = i;
  k = std::min(k, V);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  for (int i = 0; i < k; ++i) lp.top.push_back({idx[i], float(double(logits[idx[i]]) - lse)});
  return lp;
}

bool is_stop_id(const StopConditions& st, std::optional<int32_t> eos, int32_t t) {
  if (!st.ignore_eos && eos && t == *eos) return true;
  return std::find(st.stop_ids.begin(), st.stop_ids.end(), t) != st.stop_ids.end();
}

std::optional<int32_t> engine_eos(const Tokenizer* tok, const ModelConfig& c) {
  if (tok) return tok->eos_id();
  if (c.eos_token_id >= 0) return c.eos_token_id;
  return std::nullopt;
}

}  // namespace

void Engine::finish_seq(Seq& s, FinishReason reason, std::vector<TokenEvent>& ev) {
  TokenEvent* e = (!ev.empty() && ev.back().request == s.req->id && ev.back().sample == s.sample &&
                   !ev.back().finished)
                      ? &ev.back()
                      : nullptr;
  if (!e) {
    ev.push_back({});
    e = &ev.back();
    e->request = s.req->id;
    e->sample = s.sample;
  }
  if (s.text) {
    std::string rest = s.text->finish();
    s.out.text += rest;
    e->text += rest;
  }
  e->finished = true;
  e->reason = reason;
  s.out.reason = reason;
  s.out.score = s.out.logprob;
  s.finished = true;
  cache_->release(s.kv);
  s.req->finished.push_back({s.sample, std::move(s.out)});
}

void Engine::sample_seq(Seq& s, const float* logits, std::vector<TokenEvent>& ev) {
  Request& r = *s.req;
  const int V = cfg_.vocab_size;
  std::vector<float> l(logits, logits + V);
  apply_penalties(l.data(), V, r.sp, s.pen);
  const bool none_allowed = s.constraint && !s.constraint->mask(l.data(), V);
  const int32_t t = none_allowed ? -1 : s.sampler->sample(l.data(), V);
  TokenEvent e;
  e.request = r.id;
  e.sample = s.sample;
  if (opts_.return_logits) e.logits.assign(logits, logits + V);
  ev.push_back(std::move(e));
  if (none_allowed || is_stop_id(r.stop, engine_eos(tok_, cfg_), t)) {
    finish_seq(s, FinishReason::stop, ev);
    return;
  }
  TokenEvent& out = ev.back();
  s.tokens.push_back(t);
  s.pen.add_output(t);
  s.out.tokens.push_back(t);
  s.out.logprob += log_prob(logits, V, t);
  out.tokens = {t};
  if (r.sp.logprobs >= 0) out.logprobs.push_back(token_logprob(logits, V, t, r.sp.logprobs));
  if (s.constraint) s.constraint->accept(t);
  if (s.text) {
    std::string text = s.text->push(t);
    s.out.text += text;
    out.text = text;
    if (s.text->hit()) {
      finish_seq(s, FinishReason::stop, ev);
      return;
    }
  }
  if (s.constraint && s.constraint->complete()) {  // e.g. the JSON value closed
    finish_seq(s, FinishReason::stop, ev);
    return;
  }
  if (s.generated() >= r.stop.max_tokens || int(s.tokens.size()) >= max_ctx_)
    finish_seq(s, FinishReason::length, ev);
}

void Engine::beam_step(Request& r, const std::vector<std::pair<Seq*, const float*>>& beams,
                       std::vector<TokenEvent>& ev) {
  const int V = cfg_.vocab_size, W = r.sp.beams;
  const double lp = r.sp.length_penalty;
  auto norm = [&](double logprob, int len) { return logprob / std::pow(std::max(len, 1), lp); };
  auto add_hyp = [&](const Seq& s, const std::vector<int32_t>& toks, double logprob,
                     FinishReason why) {
    SampleResult h;
    h.tokens = toks;
    h.logprob = logprob;
    h.score = norm(logprob, int(toks.size()));
    h.reason = why;
    auto at = std::find_if(r.hyps.begin(), r.hyps.end(),
                           [&](const SampleResult& o) { return o.score < h.score; });
    r.hyps.insert(at, std::move(h));
    if (int(r.hyps.size()) > W) r.hyps.pop_back();
  };
  struct Cand {
    double score;
    int parent;
    int32_t tok;
  };
  std::vector<Cand> cands;
  std::vector<float> l(V);
  std::vector<int32_t> idx(V);
  const int per_beam = std::min(2 * W, V);
  for (int b = 0; b < int(beams.size()); ++b) {
    Seq& s = *beams[b].first;
    std::copy(beams[b].second, beams[b].second + V, l.begin());
    apply_penalties(l.data(), V, r.sp, s.pen);
    float mx = *std::max_element(l.begin(), l.end());
    double sum = 0;
    for (float v : l) sum += std::exp(double(v - mx));
    const double lse = mx + std::log(sum);
    for (int i = 0; i < V; ++i) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + per_beam, idx.end(),
                      [&](int32_t a, int32_t c) { return l[a] > l[c] || (l[a] == l[c] && a < c); });
    for (int i = 0; i < per_beam; ++i)
      cands.push_back({s.out.logprob + (double(l[idx[i]]) - lse), b, idx[i]});
  }
  std::stable_sort(cands.begin(), cands.end(),
                   [](const Cand& a, const Cand& c) { return a.score > c.score; });
  const auto eos = engine_eos(tok_, cfg_);
  std::vector<Cand> keep;
  for (int rank = 0; rank < int(cands.size()) && int(keep.size()) < W; ++rank) {
    const Cand& c = cands[rank];
    if (is_stop_id(r.stop, eos, c.tok)) {
      if (rank < W) {
        const Seq& p = *beams[c.parent].first;
        add_hyp(p, p.out.tokens, c.score, FinishReason::stop);
      }
      continue;
    }
    keep.push_back(c);
  }
  // New beams: a parent's first child continues it in place; further children fork it first
  // (sharing its blocks copy-on-write); parents without children end.
  std::vector<int> children(beams.size(), 0);
  std::vector<Seq*> target(keep.size());
  for (size_t i = 0; i < keep.size(); ++i) {
    Seq* p = beams[keep[i].parent].first;
    target[i] = children[keep[i].parent]++ == 0 ? p : fork_seq(*p, 0);
  }
  for (size_t b = 0; b < beams.size(); ++b)
    if (children[b] == 0) {
      beams[b].first->finished = true;
      cache_->release(beams[b].first->kv);
    }
  double best_live = -INFINITY;
  for (size_t i = 0; i < keep.size(); ++i) {
    Seq& s = *target[i];
    s.tokens.push_back(keep[i].tok);
    s.pen.add_output(keep[i].tok);
    s.out.tokens.push_back(keep[i].tok);
    s.out.logprob = keep[i].score;
    if (s.generated() >= r.stop.max_tokens || int(s.tokens.size()) >= max_ctx_) {
      add_hyp(s, s.out.tokens, s.out.logprob, FinishReason::length);
      s.finished = true;
      cache_->release(s.kv);
    } else {
      best_live = std::max(best_live, norm(s.out.logprob, s.generated()));
    }
  }
  // Hugging Face's stopping rule: done once `W` hypotheses exist and no live beam's current
  // score beats the worst of them.
  bool done =
      best_live == -INFINITY || (int(r.hyps.size()) >= W && best_live <= r.hyps.back().score);
  if (!done) return;
  for (auto& s : r.seqs)
    if (!s->finished) {
      s->finished = true;
      cache_->release(s->kv);
    }
  for (int i = 0; i < int(r.hyps.size()); ++i) {
    SampleResult& h = r.hyps[i];
    if (tok_ && opts_.detokenize) h.text = tok_->decode(h.tokens);
    TokenEvent e;
    e.request = r.id;
    e.sample = i;
    e.tokens = h.tokens;
    e.text = h.text;
    e.finished = true;
    e.reason = h.reason;
    ev.push_back(std::move(e));
    r.finished.push_back({i, h});
  }
}

void Engine::finish_request(Request& r) {
  r.done = true;
  RequestResult res;
  res.id = r.id;
  res.prompt_tokens = int(r.prompt.size());
  res.cached_prompt_tokens = r.cached;
  std::sort(r.finished.begin(), r.finished.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& f : r.finished) res.samples.push_back(std::move(f.second));
  done_.push_back(std::move(res));
}

std::optional<RequestResult> Engine::take_result(int64_t id) {
  for (auto it = done_.begin(); it != done_.end(); ++it)
    if (it->id == id) {
      RequestResult r = std::move(*it);
      done_.erase(it);
      return r;
    }
  return std::nullopt;
}

bool Engine::cancel(int64_t id) {
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if ((*it)->id == id) {
      if ((*it)->preempted) --preempted_waiting_;
      waiting_.erase(it);  // holds no blocks (a preempted one released them)
      return true;
    }
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if ((*it)->id == id) {
      // Between steps every sequence left in seqs is live (finished ones were dropped).
      for (auto& s : (*it)->seqs) cache_->release(s->kv);
      running_.erase(it);
      return true;
    }
  for (auto it = done_.begin(); it != done_.end(); ++it)
    if (it->id == id) {
      done_.erase(it);
      return true;
    }
  return false;
}

bool Engine::finish_now(int64_t id) {
  auto end = [&](Request& r) {
    for (auto& s : r.seqs) {
      if (s->kv >= 0) cache_->release(s->kv);  // a preempted request's hold none
      s->out.reason = FinishReason::stop;
      s->out.score = s->out.logprob;
      r.finished.push_back({s->sample, std::move(s->out)});
    }
    r.seqs.clear();
    finish_request(r);
  };
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if ((*it)->id == id) {
      if ((*it)->preempted) --preempted_waiting_;
      end(**it);
      waiting_.erase(it);
      return true;
    }
  for (auto it = running_.begin(); it != running_.end(); ++it)
    if ((*it)->id == id) {
      end(**it);
      running_.erase(it);
      return true;
    }
  return false;
}

std::vector<RequestResult> Engine::run_all() {
  while (!idle()) step();
  std::vector<RequestResult> out;
  out.swap(done_);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

}  // namespace kiln

// The batched engine against the single-sequence contiguous-cache Decoder (model/decoder.h):
// 16 mixed-length sequences in one batch, with prompts split into chunks under a small token
// budget, produce the same greedy tokens as each alone, and their logits match the Decoder's at
// every step. Both sum the same fp32 products in different orders (GEMM blocking by batch size,
// online vs two-pass softmax), so logits agree to 1e-4 of their largest magnitude.
#include "kiln/infer/engine.h"

#include <gtest/gtest.h>

#include <cmath>

#include "infer_test_util.h"
#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/decoder.h"

namespace kiln {
namespace {

using test::make_model;
using test::tiny_llama;

std::vector<int32_t> random_prompt(Rng& rng, int len, int V) {
  std::vector<int32_t> p(len);
  for (auto& t : p) t = int32_t(rng.below(V));
  return p;
}

struct Run {
  std::vector<int32_t> tokens;
  std::vector<std::vector<float>> logits;  // per generated token
};

// Runs all prompts in one engine; collects each request's tokens and per-step logits.
std::vector<Run> run_engine(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                            const SamplingParams& sp, int max_tokens, EngineOptions opts) {
  opts.return_logits = true;
  Engine eng(m, opts);
  std::vector<Run> runs(prompts.size());
  std::vector<int64_t> ids;
  for (const auto& p : prompts) ids.push_back(eng.add_request(p, sp, test::stop_after(max_tokens)));
  while (!eng.idle())
    for (auto& e : eng.step()) {
      Run& r = runs[e.request - ids[0]];
      for (int32_t t : e.tokens) r.tokens.push_back(t);
      if (!e.logits.empty()) r.logits.push_back(e.logits);
    }
  return runs;
}

void check_against_decoder(const Model& m, const std::vector<int32_t>& prompt, const Run& r,
                           int max_ctx) {
  Decoder dec(m, max_ctx);
  std::vector<float> logits = dec.feed(prompt);
  ASSERT_EQ(r.logits.size(), r.tokens.size());
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    float scale = 0;
    for (float v : logits) scale = std::max(scale, std::fabs(v));
    for (size_t v = 0; v < logits.size(); ++v)
      ASSERT_NEAR(r.logits[i][v], logits[v], 1e-4 * scale) << "step " << i << " token " << v;
    ASSERT_EQ(r.tokens[i], int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()))
        << "step " << i;
    if (i + 1 < r.tokens.size()) logits = dec.feed({r.tokens[i]});
  }
}

void batch_invariance(const ModelConfig& c) {
  auto m = make_model(c);
  Rng rng(9);
  std::vector<std::vector<int32_t>> prompts;
  const int lens[] = {1, 3, 17, 40, 5, 16, 33, 2, 60, 9, 31, 15, 48, 7, 22, 64};
  for (int len : lens) prompts.push_back(random_prompt(rng, len, c.vocab_size));
  SamplingParams greedy;
  greedy.temperature = 0;
  EngineOptions opts;
  opts.token_budget = 40;  // forces chunked prefill mixed with decodes
  opts.max_running = 16;
  opts.prefix_caching = false;
  auto batched = run_engine(*m, prompts, greedy, 12, opts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i) + " of length " +
                 std::to_string(prompts[i].size()));
    auto alone = run_engine(*m, {prompts[i]}, greedy, 12, {});
    EXPECT_EQ(batched[i].tokens, alone[0].tokens);
    EXPECT_EQ(batched[i].tokens.size(), 12u);
    check_against_decoder(*m, prompts[i], batched[i], c.max_positions);
  }
}

TEST(Engine, BatchOf16MatchesAloneAndTheContiguousDecoder) {
  batch_invariance(tiny_llama());
}

// Mixtral: the routing per row and the experts grouped over the batch's rows give each sequence
// what it gets alone and what the decoder's token-by-token experts give.
TEST(Engine, MixtralBatchOf16MatchesAloneAndTheDecoder) {
  ModelConfig c = tiny_llama();
  c.moe.experts = 4;
  c.moe.experts_per_tok = 2;
  batch_invariance(c);
}

TEST(Engine, RopeScalingMatchesTheDecoder) {
  using K = ops::RopeScaling::Kind;
  for (K kind : {K::linear, K::dynamic_ntk, K::llama3}) {
    ModelConfig c = tiny_llama();
    c.rope_scaling.kind = kind;
    c.rope_scaling.factor = 4.0f;
    c.rope_scaling.original_max_position = 32;
    auto m = make_model(c);
    Rng rng(4);
    std::vector<std::vector<int32_t>> prompts = {random_prompt(rng, 50, c.vocab_size),
                                                 random_prompt(rng, 3, c.vocab_size)};
    SamplingParams greedy;
    greedy.temperature = 0;
    auto runs = run_engine(*m, prompts, greedy, 6, {});
    for (size_t i = 0; i < prompts.size(); ++i)
      check_against_decoder(*m, prompts[i], runs[i], c.max_positions);
  }
}

TEST(Engine, LongContextSplitsMatchTheDecoder) {
  ModelConfig c = tiny_llama(64, 700);  // > 2 attention splits of kSplitTokens
  auto m = make_model(c);
  Rng rng(6);
  std::vector<std::vector<int32_t>> prompts = {random_prompt(rng, 600, c.vocab_size)};
  SamplingParams greedy;
  greedy.temperature = 0;
  auto runs = run_engine(*m, prompts, greedy, 4, {});
  check_against_decoder(*m, prompts[0], runs[0], c.max_positions);
}

TEST(Engine, PrefixSharedEqualsUnshared) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(12);
  std::vector<int32_t> common = random_prompt(rng, 40, c.vocab_size);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) {
    auto p = common;
    for (int32_t t : random_prompt(rng, 1 + 7 * i, c.vocab_size)) p.push_back(t);
    prompts.push_back(p);
  }
  prompts.push_back(common);  // the whole prompt cached: its last block is recomputed
  SamplingParams greedy;
  greedy.temperature = 0;
  EngineOptions off;
  off.prefix_caching = false;
  auto unshared = run_engine(*m, prompts, greedy, 10, off);
  // Shared: the first request fills the cache, the rest (submitted later) reuse its blocks.
  Engine eng(*m, EngineOptions{});
  auto first = eng.add_request(prompts[0], greedy, test::stop_after(10));
  eng.run_all();
  (void)first;
  std::vector<int64_t> ids;
  for (size_t i = 1; i < prompts.size(); ++i)
    ids.push_back(eng.add_request(prompts[i], greedy, test::stop_after(10)));
  auto results = eng.run_all();
  ASSERT_EQ(results.size(), prompts.size() - 1);
  for (size_t i = 1; i < prompts.size(); ++i) {
    EXPECT_EQ(results[i - 1].samples[0].tokens, unshared[i].tokens) << "prompt " << i;
    EXPECT_EQ(results[i - 1].cached_prompt_tokens, i == 4 ? 32 : 32) << "prompt " << i;
  }
  EXPECT_GT(eng.cache().prefix_hit_tokens(), 0);
  EXPECT_EQ(eng.cache().free_blocks(), eng.cache().num_blocks());
}

TEST(Engine, SeedsReproduceRegardlessOfBatch) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(21);
  SamplingParams sp;
  sp.temperature = 1.0f;
  sp.top_k = 20;
  sp.top_p = 0.95f;
  sp.seed = 1234;
  std::vector<int32_t> prompt = random_prompt(rng, 10, c.vocab_size);
  auto alone = run_engine(*m, {prompt}, sp, 20, {});
  std::vector<std::vector<int32_t>> batch;
  for (int i = 0; i < 7; ++i) batch.push_back(random_prompt(rng, 3 + 5 * i, c.vocab_size));
  batch.insert(batch.begin() + 3, prompt);
  auto many = run_engine(*m, batch, sp, 20, {});
  EXPECT_EQ(many[3].tokens, alone[0].tokens);
  sp.seed = 99;
  auto other = run_engine(*m, {prompt}, sp, 20, {});
  EXPECT_NE(other[0].tokens, alone[0].tokens);
}

// Logprobs are the raw distribution's: log-softmax of the logits the step produced, untouched by
// temperature, penalties and bias (which do change what is sampled); the top k in order.
TEST(Engine, LogprobsAreTheRawLogSoftmax) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(5);
  SamplingParams sp;
  sp.temperature = 1.7f;
  sp.presence_penalty = 1.5f;
  sp.logit_bias = {{3, 5.0f}};
  sp.seed = 7;
  sp.logprobs = 4;
  EngineOptions opts;
  opts.return_logits = true;
  Engine eng(*m, opts);
  eng.add_request(random_prompt(rng, 9, c.vocab_size), sp, test::stop_after(10));
  int checked = 0;
  while (!eng.idle())
    for (const TokenEvent& e : eng.step()) {
      ASSERT_EQ(e.logprobs.size(), e.tokens.size());
      if (e.tokens.empty()) continue;
      const std::vector<float>& l = e.logits;
      double mx = *std::max_element(l.begin(), l.end()), sum = 0;
      for (float v : l) sum += std::exp(double(v) - mx);
      const double lse = mx + std::log(sum);
      const TokenLogprob& lp = e.logprobs[0];
      EXPECT_EQ(lp.token, e.tokens[0]);
      EXPECT_NEAR(lp.logprob, l[e.tokens[0]] - lse, 1e-5);
      ASSERT_EQ(lp.top.size(), 4u);
      std::vector<int32_t> order(l.size());
      for (size_t i = 0; i < l.size(); ++i) order[i] = int32_t(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return l[a] > l[b]; });
      for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(lp.top[i].first, order[i]);
        EXPECT_NEAR(lp.top[i].second, l[order[i]] - lse, 1e-5);
      }
      ++checked;
    }
  EXPECT_EQ(checked, 10);
  sp.logprobs = 21;
  EXPECT_THROW(eng.add_request({1, 2}, sp), Error);
}

// A constraint decides what may be drawn: here tokens 5 and 7 alternate, and after four the
// output is complete (finish reason stop, no fifth step); one that allows nothing stops at once.
struct Alternate : LogitsConstraint {
  int n = 0, limit = 4;
  bool mask(float* l, int V) override {
    if (limit == 0) return false;
    for (int i = 0; i < V; ++i)
      if (i != (n % 2 ? 7 : 5)) l[i] = -INFINITY;
    return true;
  }
  void accept(int32_t t) override {
    EXPECT_EQ(t, n % 2 ? 7 : 5);
    ++n;
  }
  bool complete() const override { return n == limit; }
};

TEST(Engine, ConstraintMasksAndCompletes) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Engine eng(*m);
  SamplingParams sp;
  sp.n = 2;
  sp.seed = 3;
  sp.constraint = [] { return std::make_unique<Alternate>(); };
  const int64_t a = eng.add_request({1, 2, 3}, sp, test::stop_after(20));
  sp.n = 1;
  sp.constraint = [] {
    auto x = std::make_unique<Alternate>();
    x->limit = 0;
    return x;
  };
  const int64_t b = eng.add_request({1, 2, 3}, sp, test::stop_after(20));
  auto res = eng.run_all();
  ASSERT_EQ(res.size(), 2u);
  ASSERT_EQ(res[0].id, a);
  for (const SampleResult& s : res[0].samples) {
    EXPECT_EQ(s.tokens, (std::vector<int32_t>{5, 7, 5, 7}));
    EXPECT_EQ(s.reason, FinishReason::stop);
  }
  ASSERT_EQ(res[1].id, b);
  EXPECT_TRUE(res[1].samples[0].tokens.empty());
  EXPECT_EQ(res[1].samples[0].reason, FinishReason::stop);
  sp.beams = 2;
  EXPECT_THROW(eng.add_request({1}, sp), Error);
}

TEST(Engine, NSamplesShareThePromptBlocks) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(8);
  std::vector<int32_t> prompt = random_prompt(rng, 48, c.vocab_size);  // 3 full blocks
  SamplingParams sp;
  sp.seed = 77;
  sp.n = 4;
  Engine eng(*m);
  auto id = eng.add_request(prompt, sp, test::stop_after(8));
  eng.step();  // the prompt
  // One prompt copy: 3 full blocks shared by all 4, plus one block each for their outputs.
  EXPECT_EQ(eng.cache().num_blocks() - eng.cache().free_blocks(), 3);
  eng.step();
  EXPECT_EQ(eng.cache().num_blocks() - eng.cache().free_blocks(), 3 + 4);
  eng.run_all();
  (void)id;
  // Sample 0 is the n = 1 request with the same seed; the samples differ from each other.
  Engine one(*m);
  SamplingParams sp1 = sp;
  sp1.n = 1;
  one.add_request(prompt, sp1, test::stop_after(8));
  auto r1 = one.run_all();
  Engine again(*m);
  again.add_request(prompt, sp, test::stop_after(8));
  auto r4 = again.run_all();
  ASSERT_EQ(r4[0].samples.size(), 4u);
  EXPECT_EQ(r4[0].samples[0].tokens, r1[0].samples[0].tokens);
  EXPECT_NE(r4[0].samples[1].tokens, r4[0].samples[2].tokens);
}

// A cancelled request (waiting, mid-prompt, or mid-decode with n > 1) frees every KV block and
// its reservation at once, and the requests left produce what they produce alone.
TEST(Engine, CancelFreesBlocksAndLeavesOthersUnchanged) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(5);
  std::vector<int32_t> keep = random_prompt(rng, 20, c.vocab_size);
  std::vector<int32_t> other = random_prompt(rng, 40, c.vocab_size);
  SamplingParams greedy;
  greedy.temperature = 0;
  SamplingParams four = greedy;
  four.n = 4;
  EngineOptions opts;
  opts.token_budget = 16;  // the 40-token prompt takes several steps
  opts.max_running = 8;
  opts.prefix_caching = false;
  Engine eng(*m, opts);
  const int64_t a = eng.add_request(keep, greedy, test::stop_after(10));
  const int64_t b = eng.add_request(other, four, test::stop_after(10));
  const int64_t w = eng.add_request(other, greedy, test::stop_after(10));
  EXPECT_EQ(eng.num_waiting(), 3);
  EXPECT_TRUE(eng.cancel(w));  // still waiting
  EXPECT_EQ(eng.num_waiting(), 2);
  eng.step();  // both admitted; b mid-prompt
  EXPECT_EQ(eng.num_running(), 2);
  EXPECT_TRUE(eng.cancel(b));
  EXPECT_EQ(eng.num_running(), 1);
  const int64_t b2 = eng.add_request(other, four, test::stop_after(10));
  for (int i = 0; i < 5; ++i) eng.step();  // b2 forked into 4 decoding samples
  EXPECT_TRUE(eng.cancel(b2));
  EXPECT_FALSE(eng.cancel(b2));
  EXPECT_FALSE(eng.cancel(12345));
  std::vector<int32_t> got;
  while (!eng.idle())
    for (auto& e : eng.step()) {
      EXPECT_EQ(e.request, a);
      got.insert(got.end(), e.tokens.begin(), e.tokens.end());
    }
  auto res = eng.take_result(a);
  ASSERT_TRUE(res);
  EXPECT_FALSE(eng.take_result(b2));
  EXPECT_EQ(eng.cache().free_blocks(), eng.cache().num_blocks());
  Engine alone(*m, opts);
  alone.add_request(keep, greedy, test::stop_after(10));
  EXPECT_EQ(alone.run_all().at(0).samples.at(0).tokens, res->samples.at(0).tokens);
}

// A cache far smaller than the load: requests are admitted on their prompts' blocks and the newest
// is preempted (blocks freed, recomputed later) when a running one needs a block. Every request,
// greedy, seeded sampling (RNG kept across preemption), n = 2 and beams, ends exactly as alone.
TEST(Engine, PreemptedRequestsEndAsTheyWouldAlone) {
  ModelConfig c = tiny_llama();
  auto m = make_model(c);
  Rng rng(31);
  struct Req {
    std::vector<int32_t> prompt;
    SamplingParams sp;
  };
  std::vector<Req> reqs;
  for (int i = 0; i < 14; ++i) {
    Req q;
    q.prompt = random_prompt(rng, 5 + 3 * i, c.vocab_size);
    q.sp.temperature = 0;
    if (i % 4 == 1) {
      q.sp.temperature = 1.0f;
      q.sp.seed = 100 + i;
    }
    if (i == 6) q.sp.n = 2;
    if (i == 9) q.sp.beams = 2;
    reqs.push_back(q);
  }
  const int max_tokens = 40;
  for (bool prefix : {true, false}) {
    SCOPED_TRACE(prefix ? "prefix caching" : "no prefix caching");
    EngineOptions opts;
    opts.max_running = 16;
    opts.token_budget = 48;
    opts.cache_blocks = 14;  // a request alone needs at most 10; all 14 at once about 70
    opts.prefix_caching = prefix;
    Engine eng(*m, opts);
    for (const Req& q : reqs) eng.add_request(q.prompt, q.sp, test::stop_after(max_tokens));
    int max_running = 0;
    std::vector<RequestResult> got;
    while (!eng.idle()) {
      eng.step();
      max_running = std::max(max_running, eng.num_running());
      ASSERT_LE(eng.num_preempted_waiting(), eng.num_waiting());
    }
    EXPECT_EQ(eng.num_preempted_waiting(), 0);
    for (size_t i = 0; i < reqs.size(); ++i) got.push_back(*eng.take_result(int64_t(i)));
    EXPECT_GT(eng.num_preemptions(), 0);
    EXPECT_GT(max_running, 3);  // whole-context reservations (5-10 blocks) would allow 2
    EXPECT_EQ(eng.cache().free_blocks(), eng.cache().num_blocks());
    for (size_t i = 0; i < reqs.size(); ++i) {
      SCOPED_TRACE("request " + std::to_string(i));
      Engine alone(*m, EngineOptions{});
      alone.add_request(reqs[i].prompt, reqs[i].sp, test::stop_after(max_tokens));
      RequestResult want = alone.run_all().at(0);
      ASSERT_EQ(got[i].samples.size(), want.samples.size());
      for (size_t k = 0; k < want.samples.size(); ++k) {
        EXPECT_EQ(got[i].samples[k].tokens, want.samples[k].tokens) << "sample " << k;
        EXPECT_EQ(got[i].samples[k].reason, want.samples[k].reason);
      }
      EXPECT_EQ(got[i].prompt_tokens, int(reqs[i].prompt.size()));
    }
  }
}

TEST(Engine, StopStringsAndIdsCutExactly) {
  Tokenizer tok = Tokenizer::byte_level({});
  ModelConfig c = tiny_llama(tok.vocab_size());
  auto m = make_model(c);
  Engine eng(*m, {}, &tok);
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<int32_t> prompt = tok.encode("hello world");
  eng.add_request(prompt, greedy, test::stop_after(30));
  auto full = eng.run_all()[0].samples[0];
  ASSERT_EQ(full.tokens.size(), 30u);
  ASSERT_EQ(full.reason, FinishReason::length);
  const std::string text = full.text;
  // A stop string spanning tokens (one byte per token here): cut just before its first match.
  const std::string stop = text.substr(11, 3);
  const size_t at = text.find(stop);
  std::string streamed;
  auto id = eng.add_request(prompt, greedy, test::stop_after(30, {stop, "\x01\x02"}));
  while (!eng.idle())
    for (auto& e : eng.step()) streamed += e.text;
  auto cut = *eng.take_result(id);
  EXPECT_EQ(cut.samples[0].text, text.substr(0, at));
  EXPECT_EQ(streamed, text.substr(0, at));
  EXPECT_EQ(cut.samples[0].reason, FinishReason::stop);
  // A stop id ends before that token, which is not part of the output.
  eng.add_request(prompt, greedy, test::stop_after(30, {}, {full.tokens[5]}));
  auto byid = eng.run_all()[0].samples[0];
  const size_t first =
      std::find(full.tokens.begin(), full.tokens.end(), full.tokens[5]) - full.tokens.begin();
  EXPECT_EQ(byid.tokens, std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + first));
  EXPECT_EQ(byid.reason, FinishReason::stop);
}

// detokenize = false: ids only (no text, stop strings refused). finish_now ends a decoding n = 2
// request with the tokens each sample has (a prefix of its full output), reason stop, every
// KV block freed, and a request beside it unchanged.
TEST(Engine, FinishNowEndsWithTheTokensSoFar) {
  Tokenizer tok = Tokenizer::byte_level({});
  ModelConfig c = tiny_llama(tok.vocab_size());
  auto m = make_model(c);
  EngineOptions opts;
  opts.detokenize = false;
  Engine eng(*m, opts, &tok);
  SamplingParams two;
  two.temperature = 0;
  two.n = 2;
  const std::vector<int32_t> prompt = tok.encode("hello world");
  EXPECT_THROW(eng.add_request(prompt, two, test::stop_after(30, {"x"})), Error);
  eng.add_request(prompt, two, test::stop_after(30));
  const RequestResult full = eng.run_all().at(0);
  const int64_t id = eng.add_request(prompt, two, test::stop_after(30));
  const int64_t other = eng.add_request(tok.encode("other"), two, test::stop_after(8));
  for (int i = 0; i < 5; ++i)
    for (const TokenEvent& e : eng.step()) EXPECT_EQ(e.text, "");
  EXPECT_TRUE(eng.finish_now(id));
  EXPECT_FALSE(eng.finish_now(id));
  const std::optional<RequestResult> cut = eng.take_result(id);
  ASSERT_TRUE(cut);
  ASSERT_EQ(cut->samples.size(), 2u);
  EXPECT_EQ(cut->prompt_tokens, int(prompt.size()));
  for (int k = 0; k < 2; ++k) {
    const std::vector<int32_t>& t = cut->samples[k].tokens;
    EXPECT_EQ(cut->samples[k].reason, FinishReason::stop);
    ASSERT_GT(t.size(), 0u);
    ASSERT_LT(t.size(), full.samples[k].tokens.size());
    EXPECT_TRUE(std::equal(t.begin(), t.end(), full.samples[k].tokens.begin()));
  }
  const std::vector<RequestResult> rest = eng.run_all();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].id, other);
  EXPECT_EQ(rest[0].samples.at(0).tokens.size(), 8u);
  EXPECT_EQ(eng.cache().free_blocks(), eng.cache().num_blocks());
}

TEST(Engine, BadInputIsAClearError) {
  ModelConfig c = tiny_llama(64, 32);
  auto m = make_model(c);
  Engine eng(*m);
  SamplingParams ok;
  auto expect_error = [&](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { eng.add_request(std::vector<int32_t>(32, 1), ok); }, "context");
  expect_error([&] { eng.add_request({}, ok); }, "empty");
  expect_error([&] { eng.add_request({1, 64}, ok); }, "vocabulary");
  SamplingParams bad = ok;
  bad.temperature = -0.5f;
  expect_error([&] { eng.add_request({1, 2}, bad); }, "temperature");
  bad = ok;
  bad.top_p = 0;
  expect_error([&] { eng.add_request({1, 2}, bad); }, "top_p");
  bad = ok;
  bad.min_p = 1.5f;
  expect_error([&] { eng.add_request({1, 2}, bad); }, "min_p");
  expect_error([&] { eng.add_request({1, 2}, ok, test::stop_after(0)); }, "max_tokens");
  expect_error([&] { eng.add_request({1, 2}, ok, test::stop_after(16, {"x"})); }, "tokenizer");
  ModelConfig g = c;
  g.arch = Arch::gpt2;
  g.kv_heads = g.heads;
  g.tie_embeddings = true;
  Model gm(g);
  EXPECT_NO_THROW(Engine e2(gm));  // GPT-2 runs in the engine too (test_cpu_forward_pass.cpp)
  EXPECT_TRUE(eng.idle());
  // A prompt that fits, with max_tokens past the context, stops at the context.
  auto id = eng.add_request(std::vector<int32_t>(30, 1), ok, test::stop_after(100));
  auto r = eng.run_all();
  EXPECT_EQ(r[0].id, id);
  EXPECT_EQ(r[0].samples[0].tokens.size(), 2u);
  EXPECT_EQ(r[0].samples[0].reason, FinishReason::length);
}

}  // namespace
}  // namespace kiln

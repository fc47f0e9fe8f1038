// Beam search equals exhaustive search on a model small enough to enumerate: vocabulary 8,
// 3 new tokens, so 512 continuations whose log-probabilities the Decoder gives exactly. With 64
// beams (8^2, nothing pruned before the last step) the returned hypotheses are the exhaustive top
// 64 in order; with fewer beams each hypothesis still carries its true log-probability. 1 beam is
// greedy. Scores agree to 1e-4 (fp32 logits, double sums).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "infer_test_util.h"
#include "kiln/infer/engine.h"
#include "kiln/model/decoder.h"

namespace kiln {
namespace {

double log_softmax_at(const std::vector<float>& l, int t) {
  double mx = *std::max_element(l.begin(), l.end()), s = 0;
  for (float v : l) s += std::exp(double(v) - mx);
  return double(l[t]) - mx - std::log(s);
}

struct Scored {
  double logprob;
  std::vector<int32_t> tokens;
};

TEST(BeamSearch, EqualsExhaustiveSearch) {
  ModelConfig c = test::tiny_llama(8, 32);
  auto m = test::make_model(c, 17);
  const std::vector<int32_t> prompt = {1, 5, 2};
  std::vector<Scored> all;
  Decoder dec(*m, 16);
  auto l0 = dec.feed(prompt);
  for (int a = 0; a < 8; ++a) {
    Decoder d1(*m, 16);
    d1.feed(prompt);
    auto l1 = d1.feed({a});
    for (int b = 0; b < 8; ++b) {
      Decoder d2(*m, 16);
      d2.feed(prompt);
      d2.feed({a});
      auto l2 = d2.feed({b});
      for (int x = 0; x < 8; ++x)
        all.push_back(
            {log_softmax_at(l0, a) + log_softmax_at(l1, b) + log_softmax_at(l2, x), {a, b, x}});
    }
  }
  std::sort(all.begin(), all.end(), [](auto& p, auto& q) { return p.logprob > q.logprob; });

  auto beam = [&](int W, float lp) {
    Engine eng(*m);
    SamplingParams sp;
    sp.beams = W;
    sp.temperature = 0;  // beam search ignores it; with 1 beam this is the greedy request
    sp.length_penalty = lp;
    eng.add_request(prompt, sp, test::stop_after(3));
    return eng.run_all()[0].samples;
  };
  auto hyps = beam(64, 1.0f);
  ASSERT_EQ(hyps.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    EXPECT_NEAR(hyps[i].logprob, all[i].logprob, 1e-4) << "rank " << i;
    EXPECT_NEAR(hyps[i].score, all[i].logprob / 3.0, 1e-4) << "rank " << i;
  }
  EXPECT_EQ(hyps[0].tokens, all[0].tokens);
  // Fewer beams: true log-probabilities, best first.
  for (int W : {2, 5}) {
    auto h = beam(W, 0.5f);
    ASSERT_EQ(int(h.size()), W);
    for (int i = 0; i < W; ++i) {
      auto it =
          std::find_if(all.begin(), all.end(), [&](auto& s) { return s.tokens == h[i].tokens; });
      ASSERT_NE(it, all.end());
      EXPECT_NEAR(h[i].logprob, it->logprob, 1e-4);
      if (i) {
        EXPECT_GE(h[i - 1].score, h[i].score);
      }
    }
  }
  // One beam is greedy.
  Engine g(*m);
  SamplingParams greedy;
  greedy.temperature = 0;
  g.add_request(prompt, greedy, test::stop_after(3));
  EXPECT_EQ(beam(1, 1.0f)[0].tokens, g.run_all()[0].samples[0].tokens);
}

TEST(BeamSearch, BeamsFinishAtEosWithLengthPenalty) {
  ModelConfig c = test::tiny_llama(8, 32);
  c.eos_token_id = 3;
  auto m = test::make_model(c, 17);
  Engine eng(*m);
  SamplingParams sp;
  sp.beams = 4;
  sp.length_penalty = 2.0f;
  eng.add_request({1, 5, 2}, sp, test::stop_after(6));
  auto h = eng.run_all()[0].samples;
  ASSERT_EQ(h.size(), 4u);
  for (size_t i = 0; i < h.size(); ++i) {
    EXPECT_NEAR(h[i].score,
                h[i].logprob / std::pow(double(std::max<size_t>(h[i].tokens.size(), 1)), 2.0),
                1e-9);
    for (int32_t t : h[i].tokens) EXPECT_NE(t, 3);
    if (i) {
      EXPECT_GE(h[i - 1].score, h[i].score);
    }
  }
  EXPECT_EQ(eng.cache().free_blocks(), eng.cache().num_blocks());
}

}  // namespace
}  // namespace kiln

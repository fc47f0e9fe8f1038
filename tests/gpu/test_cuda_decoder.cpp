// The engine on the GPU (infer/cuda_decoder.h's ForwardPass, fp32) against the engine on the CPU
// for both families: the same greedy tokens for a batch of mixed-length prompts with chunked
// prefill, logits within 1e-3 of their largest magnitude (exact fp32 GEMMs, TF32 off, summed in
// other orders: warp shuffles and split-K against OpenBLAS), and n samples and beams, which fork
// sequences and copy shared blocks on the device (copy-on-write). Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "cuda/cuda_test_util.h"
#include "kiln/core/rng.h"
#include "kiln/infer/cuda_decoder.h"
#include "kiln/infer/engine.h"
#include "kiln/model/model_io.h"
#include "test_util.h"

namespace kiln {
namespace {

struct Out {
  std::vector<std::vector<int32_t>> tokens;  // per request, sample 0
  std::vector<std::vector<float>> first_logits;
  std::vector<RequestResult> results;
};

Out run(const Model& m, bool gpu, const std::vector<std::vector<int32_t>>& prompts,
        const SamplingParams& sp) {
  EngineOptions o;
  o.token_budget = 40;
  o.max_running = 8;
  o.max_context = 96;
  o.return_logits = true;
  const int ctx = context_length(m.config(), o);
  Engine eng(m.config(),
             gpu ? make_cuda_forward_pass(m, ctx, /*bf16=*/false)
                 : make_cpu_forward_pass(m.config(), fp32_weights(m), ctx),
             o);
  StopConditions st;
  st.max_tokens = 10;
  st.ignore_eos = true;
  for (const auto& p : prompts) eng.add_request(p, sp, st);
  Out out;
  out.first_logits.resize(prompts.size());
  while (!eng.idle())
    for (auto& e : eng.step())
      if (out.first_logits[e.request].empty() && !e.logits.empty())
        out.first_logits[e.request] = e.logits;
  out.results = eng.run_all();
  for (auto& r : out.results) out.tokens.push_back(r.samples.at(0).tokens);
  return out;
}

TEST(CudaForwardPass, EngineOnTheGpuMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  for (const char* config : {"gpt2-tiny.json", "llama-tiny.json"}) {
    SCOPED_TRACE(config);
    ModelConfig cfg = load_model_config(test::source_dir() + "/configs/models/" + config);
    cfg.initializer_range = 0.5f;  // peaked logits: no greedy choice within rounding of a tie
    Model m(cfg);
    m.init_weights(3);
    Rng rng(5);
    std::vector<std::vector<int32_t>> prompts;
    for (int len : {1, 5, 17, 40, 23}) {
      std::vector<int32_t> p(len);
      for (auto& t : p) t = int32_t(rng.below(m.config().vocab_size));
      prompts.push_back(p);
    }
    SamplingParams greedy;
    greedy.temperature = 0;
    Out c = run(m, false, prompts, greedy), g = run(m, true, prompts, greedy);
    EXPECT_EQ(g.tokens, c.tokens);
    for (size_t i = 0; i < prompts.size(); ++i) {
      float scale = 0;
      for (float v : c.first_logits[i]) scale = std::max(scale, std::fabs(v));
      ASSERT_EQ(g.first_logits[i].size(), c.first_logits[i].size());
      for (size_t v = 0; v < c.first_logits[i].size(); ++v)
        ASSERT_NEAR(g.first_logits[i][v], c.first_logits[i][v], 1e-3 * scale) << "prompt " << i;
    }
    // Forks: 3 samples share the prompt's blocks; 3 beams fork mid-block and copy on write.
    SamplingParams beams;
    beams.beams = 3;
    Out cb = run(m, false, {prompts[2]}, beams), gb = run(m, true, {prompts[2]}, beams);
    ASSERT_EQ(gb.results[0].samples.size(), cb.results[0].samples.size());
    for (size_t i = 0; i < cb.results[0].samples.size(); ++i)
      EXPECT_EQ(gb.results[0].samples[i].tokens, cb.results[0].samples[i].tokens) << "beam " << i;
    SamplingParams n3;
    n3.n = 3;
    n3.seed = 4;
    n3.temperature = 0.7f;
    Out cn = run(m, false, {prompts[3]}, n3), gn = run(m, true, {prompts[3]}, n3);
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(gn.results[0].samples[i].tokens, cn.results[0].samples[i].tokens) << "sample " << i;
  }
}

}  // namespace
}  // namespace kiln

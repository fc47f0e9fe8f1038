// The KV-cache decoder must produce the same logits as the full training forward at every
// position, whether the prompt is fed at once, in chunks, or token by token. Both compute the
// same fp32 sums in different orders (one query vs all), so logits agree to 1e-5 of their
// largest magnitude.
#include "kiln/model/decoder.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/ops/matmul.h"

namespace kiln {
namespace {

void check(Arch arch, int experts = 0) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 40;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = arch == Arch::llama ? 2 : 4;
  c.head_dim = 8;
  c.intermediate = 48;
  c.max_positions = 24;
  c.tie_embeddings = arch == Arch::gpt2;
  c.moe.experts = experts;
  c.moe.experts_per_tok = 2;
  Model m(c);
  m.init_weights(5);
  const int T = 19;
  std::vector<int> ids(T), tg(T, -1);
  Rng rng(2);
  for (int& t : ids) t = int(rng.below(c.vocab_size));
  TrainState ts(m, 1, T);
  ts.step(m, ids.data(), tg.data(), nullptr);
  std::vector<float> full(size_t(T) * c.vocab_size);
  ops::ref::gemm(full.data(), ts.final_hidden().f32(), m.bind(m.weights().f32()).lm_head, T,
                 c.vocab_size, c.hidden, false, true, 1, 0);
  float scale = 0;
  for (float v : full) scale = std::max(scale, std::fabs(v));

  for (int chunk : {1, 4, T}) {
    Decoder dec(m, T);
    for (int start = 0; start < T; start += chunk) {
      int n = std::min(chunk, T - start);
      const auto& logits = dec.feed(std::vector<int>(ids.begin() + start, ids.begin() + start + n));
      const float* want = &full[size_t(start + n - 1) * c.vocab_size];
      for (int v = 0; v < c.vocab_size; ++v)
        ASSERT_NEAR(logits[v], want[v], 1e-5 * scale)
            << "chunk " << chunk << " pos " << start + n - 1;
    }
    EXPECT_THROW(dec.feed({1}), Error);  // past max_len
  }
}

TEST(Decoder, LlamaMatchesTrainingForward) {
  check(Arch::llama);
}
TEST(Decoder, Gpt2MatchesTrainingForward) {
  check(Arch::gpt2);
}
// Mixtral: the decoder's token-by-token routing (its own softmax and arg-max loop) against the
// training forward's permuted, per-expert GEMMs.
TEST(Decoder, MixtralMatchesTrainingForward) {
  check(Arch::llama, 4);
}

}  // namespace
}  // namespace kiln

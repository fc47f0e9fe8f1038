// A tiny Llama for the engine tests: weights wide enough (initializer_range 0.5) that logits are
// peaked, so a greedy argmax never sits within rounding of a tie.
#pragma once

#include <memory>

#include "kiln/infer/engine.h"
#include "kiln/model/transformer.h"

namespace kiln::test {

inline ModelConfig tiny_llama(int vocab = 64, int max_pos = 160) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.vocab_size = vocab;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.intermediate = 48;
  c.max_positions = max_pos;
  c.initializer_range = 0.5f;
  c.eos_token_id = -1;  // no eos: generations run to max_tokens unless a test asks otherwise
  return c;
}

// The GPT-2 counterpart: LayerNorm, learned positions, biases, GELU, tied embeddings, Conv1D
// (IN, OUT) weights. init_weights zeroes biases and sets norms to 1; randomize_all gives them
// values too, so a forgotten bias or LayerNorm shift shows.
inline ModelConfig tiny_gpt2(int vocab = 64, int max_pos = 160) {
  ModelConfig c = tiny_llama(vocab, max_pos);
  c.arch = Arch::gpt2;
  c.kv_heads = c.heads;
  c.intermediate = 4 * c.hidden;
  c.tie_embeddings = true;
  return c;
}

inline std::unique_ptr<Model> make_model(const ModelConfig& c, uint64_t seed = 3) {
  auto m = std::make_unique<Model>(c);
  m->init_weights(seed);
  return m;
}

inline StopConditions stop_after(int max_tokens, std::vector<std::string> strings = {},
                                 std::vector<int32_t> ids = {}) {
  StopConditions s;
  s.max_tokens = max_tokens;
  s.stop_strings = std::move(strings);
  s.stop_ids = std::move(ids);
  return s;
}

}  // namespace kiln::test

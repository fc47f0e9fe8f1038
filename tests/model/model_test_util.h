// Shared by the model tests that save and load directories (test_model_io.cpp, test_lora.cpp):
// a tiny config of either family, and the message of the Error a call throws.
#pragma once

#include <functional>
#include <string>

#include "kiln/core/error.h"
#include "kiln/model/config.h"

namespace kiln::test {

inline ModelConfig tiny(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 50;
  c.hidden = 16;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = arch == Arch::llama ? 2 : 4;
  c.head_dim = 4;
  c.intermediate = 24;
  c.max_positions = 32;
  c.tie_embeddings = arch == Arch::gpt2;
  return c;
}

// The message of the Error f throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace kiln::test

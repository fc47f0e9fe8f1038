// Constrained decoding's hook into sampling (e.g. a JSON schema's grammar, serve/json_grammar.h):
// one instance per sequence, asked before each draw which tokens may come next. The engine
// applies it after penalties and before temperature and the filters; logprobs stay the raw
// distribution's. Cost: whatever mask() costs, once per sequence per step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace kiln {

class LogitsConstraint {
 public:
  virtual ~LogitsConstraint() = default;
  // Sets the logits (V) of tokens that may not come next to -inf. False when none may: the
  // sequence then finishes (reason stop).
  [[nodiscard]] virtual bool mask(float* logits, int V) = 0;
  // The token drawn (one mask() allowed).
  virtual void accept(int32_t token) = 0;
  // Nothing may follow the output: the sequence finishes (reason stop) without another step.
  [[nodiscard]] virtual bool complete() const = 0;
};

// Makes a fresh constraint for each sequence of a request (n samples each get their own).
using ConstraintFactory = std::function<std::unique_ptr<LogitsConstraint>()>;

}  // namespace kiln

// The stage after the engine: the engine loop emits token ids only; on the detokenize stage's
// thread each request's updates pass through its RequestDetokenizer, which turns ids into text
// (complete UTF-8 only) and applies the stop strings, with infer/stop_strings.h's TextStream, the
// same code the engine uses when it detokenizes itself (kiln generate, kiln chat). A sample that
// hits a stop string ends there: finish_reason stop, its tokens counted up to the one that
// completed the stop string, and what the engine made after it dropped. Once every sample has
// ended that way or in the engine, the caller asks the engine loop to finish the request, which
// frees its KV blocks. Cost: O(text + longest stop) per token.
#pragma once

#include <string>
#include <vector>

#include "kiln/infer/stop_strings.h"
#include "kiln/serve/engine_loop.h"

namespace kiln::serve {

class RequestDetokenizer {
 public:
  RequestDetokenizer(const Tokenizer& tok, const std::vector<std::string>& stops, int n);
  // Sets the text of u's events and result (the engine's, if any, is replaced) and drops what a
  // sample made after its stop string. Returns true, once, when the engine should finish the
  // request now: every sample has ended, some by a stop string, and no result came yet.
  [[nodiscard]] bool apply(EngineUpdate& u);

 private:
  struct Sample {
    TextStream text;
    std::string all;  // the text so far
    int tokens = 0;   // up to the stop string's last token
    bool ended = false, hit = false;
  };
  std::vector<Sample> samples_;
  bool asked_ = false;

 public:
  // Set once an update could not be detokenized: the request was answered with an error and
  // cancelled; its later updates are dropped.
  bool failed = false;
};

}  // namespace kiln::serve

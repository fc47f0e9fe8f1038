// Text generation for one prompt through the batched engine (engine.h), so every family gets
// every decoding option: encode (an empty prompt starts from the eos token), run to the end,
// streaming sample 0's text to a callback when there is one sample (n = 1, no beams).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kiln/infer/engine.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct GenerateResult {
  std::string text;                             // sample 0's continuation (the best beam's)
  std::vector<SampleResult> samples;            // n samples in order, or beams best first
  int prompt_tokens = 0, generated_tokens = 0;  // generated: over all samples
  double prefill_s = 0, decode_s = 0;           // to the first step's end; the rest
};

// The prompt's ids: the tokenizer's, or the eos token alone for an empty prompt. Throws Error
// when both are empty.
std::vector<int32_t> prompt_ids(const Tokenizer& tok, const std::string& prompt);

// Runs `prompt` on `eng` (which must be idle and hold the tokenizer for stop strings).
GenerateResult generate(Engine& eng, const Tokenizer& tok, const std::string& prompt,
                        const SamplingParams& sampling, const StopConditions& stop,
                        const std::function<void(const std::string&)>& on_text = {});

// The same on an fp32 engine over `model` sized for this one request.
GenerateResult generate(const Model& model, const Tokenizer& tok, const std::string& prompt,
                        int max_new_tokens, const SamplingParams& sampling,
                        const std::function<void(const std::string&)>& on_text = {});

// Engine options for one request of `prompt_tokens` + up to `stop.max_tokens`: room for its n
// samples or beams and no more context than it can use.
EngineOptions single_request_options(const ModelConfig& cfg, int prompt_tokens,
                                     const SamplingParams& sampling, const StopConditions& stop);

}  // namespace kiln

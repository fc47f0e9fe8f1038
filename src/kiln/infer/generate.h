// Text generation for one prompt with the KV-cache decoder: encode, prefill, sample token by
// token until max_new_tokens or the eos token, streaming complete UTF-8 pieces to a callback.
#pragma once

#include <functional>
#include <string>

#include "kiln/infer/sampler.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct GenerateResult {
  std::string text;  // the continuation only
  int prompt_tokens = 0, generated_tokens = 0;
  double prefill_s = 0, decode_s = 0;
};

GenerateResult generate(const Model& model, const Tokenizer& tok, const std::string& prompt,
                        int max_new_tokens, const SamplingParams& sampling,
                        const std::function<void(const std::string&)>& on_text = {});

}  // namespace kiln

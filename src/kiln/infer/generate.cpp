#include "kiln/infer/generate.h"

#include <chrono>

#include "kiln/core/error.h"
#include "kiln/model/decoder.h"

namespace kiln {

GenerateResult generate(const Model& model, const Tokenizer& tok, const std::string& prompt,
                        int max_new_tokens, const SamplingParams& sampling,
                        const std::function<void(const std::string&)>& on_text) {
  KILN_CHECK(max_new_tokens >= 0, "generate", "max_new_tokens must be >= 0, got ", max_new_tokens);
  Sampler sampler(sampling);
  std::vector<int32_t> ids = tok.encode(prompt);
  if (ids.empty() && tok.eos_id())
    ids.push_back(*tok.eos_id());  // an empty prompt starts a document
  KILN_CHECK(!ids.empty(), "generate",
             "the prompt is empty and the tokenizer has no eos token to start from");
  const int ctx = model.config().max_positions;
  KILN_CHECK(int(ids.size()) < ctx, "generate", "the prompt has ", ids.size(),
             " tokens but the model's context is ", ctx, "; shorten the prompt");
  Decoder dec(model, std::min<int>(ctx, int(ids.size()) + max_new_tokens));
  GenerateResult r;
  r.prompt_tokens = int(ids.size());
  auto t0 = std::chrono::steady_clock::now();
  const std::vector<float>* logits = &dec.feed(std::vector<int>(ids.begin(), ids.end()));
  auto t1 = std::chrono::steady_clock::now();
  IncrementalDecoder detok(tok);
  auto eos = tok.eos_id();
  for (int i = 0; i < max_new_tokens; ++i) {
    int32_t next = sampler.sample(*logits);
    if (eos && next == *eos) break;
    ++r.generated_tokens;
    std::string piece = detok.push(next);
    r.text += piece;
    if (on_text && !piece.empty()) on_text(piece);
    if (dec.pos() >= dec.max_len()) break;
    logits = &dec.feed({next});
  }
  std::string rest = detok.flush();
  r.text += rest;
  if (on_text && !rest.empty()) on_text(rest);
  auto t2 = std::chrono::steady_clock::now();
  r.prefill_s = std::chrono::duration<double>(t1 - t0).count();
  r.decode_s = std::chrono::duration<double>(t2 - t1).count();
  return r;
}

}  // namespace kiln

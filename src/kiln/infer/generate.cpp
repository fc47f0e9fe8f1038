#include "kiln/infer/generate.h"

#include <chrono>

#include "kiln/core/error.h"

namespace kiln {

std::vector<int32_t> prompt_ids(const Tokenizer& tok, const std::string& prompt) {
  std::vector<int32_t> ids = tok.encode(prompt);
  if (ids.empty() && tok.eos_id()) ids.push_back(*tok.eos_id());  // starts a document
  KILN_CHECK(!ids.empty(), "generate",
             "the prompt is empty and the tokenizer has no eos token to start from");
  return ids;
}

EngineOptions single_request_options(const ModelConfig& cfg, int prompt_tokens,
                                     const SamplingParams& sampling, const StopConditions& stop) {
  EngineOptions opts;
  opts.max_running = std::max(sampling.n, sampling.beams);
  opts.max_context = std::min<int>(cfg.max_positions, prompt_tokens + std::max(stop.max_tokens, 1));
  return opts;
}

GenerateResult generate(Engine& eng, const Tokenizer& tok, const std::string& prompt,
                        const SamplingParams& sampling, const StopConditions& stop,
                        const std::function<void(const std::string&)>& on_text) {
  KILN_CHECK(eng.idle(), "generate", "the engine is busy: run one prompt at a time");
  const std::vector<int32_t> ids = prompt_ids(tok, prompt);
  GenerateResult r;
  r.prompt_tokens = int(ids.size());
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t id = eng.add_request(ids, sampling, stop);
  const bool stream = on_text && sampling.n == 1 && sampling.beams == 1;
  bool first = true;
  while (!eng.idle()) {
    for (const TokenEvent& e : eng.step())
      if (stream && !e.text.empty()) on_text(e.text);
    if (first)
      r.prefill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    first = false;
  }
  r.decode_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - r.prefill_s;
  RequestResult res = *eng.take_result(id);
  r.samples = std::move(res.samples);
  for (const SampleResult& s : r.samples) r.generated_tokens += int(s.tokens.size());
  if (!r.samples.empty()) r.text = r.samples[0].text;
  return r;
}

GenerateResult generate(const Model& model, const Tokenizer& tok, const std::string& prompt,
                        int max_new_tokens, const SamplingParams& sampling,
                        const std::function<void(const std::string&)>& on_text) {
  KILN_CHECK(max_new_tokens >= 0, "generate", "max_new_tokens must be >= 0, got ", max_new_tokens);
  const int n = int(prompt_ids(tok, prompt).size());
  KILN_CHECK(n < model.config().max_positions, "generate", "the prompt has ", n,
             " tokens but the model's context is ", model.config().max_positions,
             "; shorten the prompt");
  if (max_new_tokens == 0) {
    GenerateResult r;
    r.prompt_tokens = n;
    return r;
  }
  StopConditions stop;
  stop.max_tokens = max_new_tokens;
  Engine eng(model, single_request_options(model.config(), n, sampling, stop), &tok);
  return generate(eng, tok, prompt, sampling, stop, on_text);
}

}  // namespace kiln

#include "kiln/serve/detokenize_stage.h"

#include <algorithm>

namespace kiln::serve {

RequestDetokenizer::RequestDetokenizer(const Tokenizer& tok, const std::vector<std::string>& stops,
                                       int n) {
  samples_.reserve(size_t(n));
  for (int i = 0; i < n; ++i) samples_.push_back({TextStream(tok, stops), "", 0, false, false});
}

bool RequestDetokenizer::apply(EngineUpdate& u) {
  std::vector<TokenEvent> kept;
  for (TokenEvent& e : u.events) {
    Sample& s = samples_.at(size_t(e.sample));
    if (s.ended) continue;  // the engine ran on past a stop string before it was told
    e.text.clear();
    for (size_t i = 0; i < e.tokens.size() && !s.hit; ++i) {
      e.text += s.text.push(e.tokens[i]);
      ++s.tokens;
      if (s.text.hit()) {  // the tokens after this one are not part of the output
        s.hit = true;
        e.tokens.resize(i + 1);
        if (e.logprobs.size() > i + 1) e.logprobs.resize(i + 1);
        e.finished = true;
        e.reason = FinishReason::stop;
      }
    }
    if (e.finished && !s.hit) e.text += s.text.finish();
    s.all += e.text;
    s.ended = e.finished;
    kept.push_back(std::move(e));
  }
  u.events = std::move(kept);
  if (u.result) {
    std::vector<SampleResult>& rs = u.result->samples;
    for (size_t k = 0; k < rs.size() && k < samples_.size(); ++k) {
      rs[k].text = samples_[k].all;
      if (!samples_[k].hit) continue;
      rs[k].tokens.resize(std::min(rs[k].tokens.size(), size_t(samples_[k].tokens)));
      rs[k].reason = FinishReason::stop;
    }
    return false;
  }
  const bool all_ended =
      std::all_of(samples_.begin(), samples_.end(), [](const Sample& s) { return s.ended; });
  if (asked_ || !all_ended ||
      !std::any_of(samples_.begin(), samples_.end(), [](const Sample& s) { return s.hit; }))
    return false;
  asked_ = true;
  return true;
}

}  // namespace kiln::serve

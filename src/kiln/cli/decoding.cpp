#include "kiln/cli/decoding.h"

#include "kiln/core/error.h"

namespace kiln::cli {

void add_decoding_options(CLI::App* cmd, DecodingArgs& a) {
  cmd->add_option("--max-new-tokens", a.stop.max_tokens, "Tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", a.sp.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a.sp.top_k, "Keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  cmd->add_option("--top-p", a.sp.top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
  cmd->add_option("--min-p", a.sp.min_p, "Drop tokens below min_p x the top probability (0 = off)")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", a.sp.repetition_penalty,
                  "Divide logits of tokens already seen (1 = off)")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", a.sp.presence_penalty,
                  "Subtract from logits of generated tokens, once [-2, 2]")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", a.sp.frequency_penalty,
                  "Subtract per occurrence in the output [-2, 2]")
      ->capture_default_str();
  cmd->add_option("--logit-bias", a.bias, "ID:BIAS added to a token's logit (repeatable)");
  cmd->add_option("--seed", a.sp.seed, "Random seed")->capture_default_str();
  cmd->add_option("--stop", a.stop.stop_strings, "Stop before this text (repeatable)");
  cmd->add_option("--stop-id", a.stop.stop_ids, "Stop at this token id (repeatable)");
  cmd->add_flag("--ignore-eos", a.stop.ignore_eos, "Keep generating past the eos token");
  cmd->add_option("--n", a.sp.n, "Independent samples (share the prompt's cache)")
      ->capture_default_str();
  cmd->add_option("--beams", a.sp.beams, "Beam search width (1 = off)")->capture_default_str();
  cmd->add_option("--length-penalty", a.sp.length_penalty, "Beam score = log p / length^penalty")
      ->capture_default_str();
}

void finish_decoding_options(DecodingArgs& a) {
  for (const std::string& b : a.bias) {
    const size_t colon = b.find(':');
    KILN_CHECK(colon != std::string::npos, "generate", "--logit-bias '", b,
               "' is not ID:BIAS (for example 50256:-100)");
    try {
      size_t used = 0;
      const int id = std::stoi(b.substr(0, colon), &used);
      KILN_CHECK(used == colon, "generate", "--logit-bias '", b, "': bad token id");
      const float bias = std::stof(b.substr(colon + 1), &used);
      KILN_CHECK(used == b.size() - colon - 1, "generate", "--logit-bias '", b, "': bad bias");
      a.sp.logit_bias.push_back({id, bias});
    } catch (const std::logic_error&) {
      fail("generate", "--logit-bias '", b, "' is not ID:BIAS (for example 50256:-100)");
    }
  }
}

}  // namespace kiln::cli

// The decoding options `generate` and `chat` share (--temperature, --top-k, --n, --stop, ...),
// defined once: DecodingArgs holds them, add_decoding_options registers them on a subcommand,
// finish_decoding_options parses what CLI11 cannot (--logit-bias ID:BIAS) after parsing.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kiln/infer/engine.h"
#include "kiln/infer/sampler.h"

namespace kiln::cli {

struct DecodingArgs {
  SamplingParams sp;
  StopConditions stop;
  std::vector<std::string> bias;  // "ID:BIAS", parsed into sp.logit_bias
};

void add_decoding_options(CLI::App* cmd, DecodingArgs& a);
// Parses the --logit-bias strings into sp.logit_bias; throws Error naming a malformed one.
void finish_decoding_options(DecodingArgs& a);

}  // namespace kiln::cli

// kiln data tokenize --input FILES... --tokenizer tok.json --output data/NAME
//                    [--text-field text] [--strict] [--no-eos] [--threads N]
// Writes Megatron's indexed dataset NAME.bin / NAME.idx (kiln/data/indexed_dataset_tokenize.h).
// .txt inputs hold one document per line; others are JSONL. Prints one JSON line with counts.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "kiln/cli/command.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/indexed_dataset_tokenize.h"

namespace kiln::cli {
namespace {

struct TokenizeArgs {
  std::vector<std::string> inputs;
  std::string tokenizer, output;
  TokenizeOptions opts;
  bool no_eos = false;
};

Command reg([](CLI::App& app) {
  CLI::App* data = group(app, "data", "Curate and tokenize datasets");
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = data->add_subcommand(
      "tokenize", "Tokenize JSONL/text into a Megatron indexed dataset (NAME.bin + NAME.idx)");
  cmd->add_option("--input,-i", a->inputs, "JSONL files (.txt: one document per line)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json, .tiktoken or SentencePiece .model")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->output, "Output prefix: writes PREFIX.bin and PREFIX.idx")
      ->required();
  cmd->add_option("--text-field", a->opts.text_field, "JSONL field with the text")
      ->capture_default_str();
  cmd->add_flag("--strict", a->opts.strict, "Fail on the first bad line instead of skipping it");
  cmd->add_flag("--no-eos", a->no_eos, "Do not end each document with the eos token");
  cmd->callback([a] {
    a->opts.append_eos = !a->no_eos;
    Tokenizer tok = Tokenizer::load(a->tokenizer);
    TokenizeReport r = tokenize_to_indexed_dataset(a->inputs, tok, a->output, a->opts);
    const auto& ex = r.errors.examples();
    for (size_t i = 0; i < ex.size() && i < 10; ++i) log_warn(JsonlErrors::describe(ex[i]));
    if (r.errors.total() > 10) log_warn("... and ", r.errors.total() - 10, " more bad lines");
    log_info("wrote ", a->output, ".bin/.idx: ", r.documents, " documents, ", r.tokens, " tokens; ",
             r.errors.total(), " bad lines skipped, ", r.empty, " empty");
    nlohmann::json j = {{"documents", r.documents},
                        {"tokens", r.tokens},
                        {"empty", r.empty},
                        {"bad_lines", r.errors.to_json()},
                        {"bytes", r.bytes},
                        {"seconds", r.seconds},
                        {"threads", num_threads()},
                        {"mb_per_s", r.seconds > 0 ? double(r.bytes) / 1e6 / r.seconds : 0.0}};
    std::printf("%s\n", j.dump().c_str());
  });
});

}  // namespace
}  // namespace kiln::cli

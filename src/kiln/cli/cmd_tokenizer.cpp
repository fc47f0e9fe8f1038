// kiln tokenizer train|encode|decode|info|bench: thin wiring over kiln/tokenizer.
//   train  --input FILES... --vocab-size N [--pattern P] [--special TOK...] [--min-frequency F]
//          --output tok.json
//   encode --tokenizer FILE [--file F | TEXT] [--format json|lines] [--allow-special]
//          [--add-special-tokens]                 (the post-processor's BOS/EOS around the ids)
//   decode --tokenizer FILE [--file F | IDS...]   (ids: a JSON array or separated by spaces)
//   info   --tokenizer FILE                       (one JSON line; "pipeline": normalizer →
//                                                  pre-tokenizer → model → post-processor →
//                                                  decoder)
//   bench  --tokenizer FILE --file TEXT [--repeat R]   (one JSON line with mb_per_s; --threads N)
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/io/file.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/tokenizer/trainer.h"

namespace kiln::cli {
namespace {

struct TokArgs {
  std::string tokenizer, file, text, format = "json", pattern, output;
  std::vector<std::string> inputs, specials, ids;
  bool allow_special = false;
  bool add_special_tokens = false;
  int32_t vocab_size = 32000;
  int64_t min_frequency = 2;
  int repeat = 3;
};

Pattern parse_pattern(const std::string& name) {
  auto p = pattern_from_name(name);
  KILN_CHECK(p.has_value(), "tokenizer", "unknown pattern '", name,
             "': use gpt2, r50k, p50k, cl100k, o200k, llama3 or none");
  return *p;
}

Tokenizer load_tokenizer(const TokArgs& a) {
  LoadOptions opts;
  if (!a.pattern.empty()) opts.pattern = parse_pattern(a.pattern);
  return Tokenizer::load(a.tokenizer, opts);
}

std::string read_input(const TokArgs& a) {
  if (!a.file.empty()) return read_file(a.file);
  if (!a.text.empty()) return a.text;
  return std::string(std::istreambuf_iterator<char>(std::cin), {});
}

void add_tokenizer_options(CLI::App* cmd, TokArgs& a) {
  cmd->add_option("--tokenizer", a.tokenizer, "tokenizer.json, .tiktoken or SentencePiece .model")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--pattern", a.pattern,
                  "Split pattern for a .tiktoken file not named after a standard encoding");
}

Command reg([](CLI::App& app) {
  auto* tok = app.add_subcommand("tokenizer", "Train, run and measure tokenizers");
  tok->require_subcommand(1);
  auto a = std::make_shared<TokArgs>();

  auto* train = tok->add_subcommand("train", "Train a byte-level BPE vocabulary (tokenizer.json)");
  train->add_option("--input", a->inputs, "Text files")->required()->check(CLI::ExistingFile);
  train->add_option("--vocab-size", a->vocab_size, "Total tokens: 256 bytes + merges + specials")
      ->capture_default_str();
  train->add_option("--pattern", a->pattern, "Pre-tokenizer: llama3, cl100k, o200k, gpt2, none");
  train->add_option("--special", a->specials, "Special tokens, added after the merges");
  train->add_option("--min-frequency", a->min_frequency, "Stop below this pair count")
      ->capture_default_str();
  train->add_option("--output", a->output, "Where to write tokenizer.json")->required();
  train->callback([a] {
    BpeTrainOptions opts;
    opts.vocab_size = a->vocab_size;
    opts.pattern = a->pattern.empty() ? Pattern::llama3 : parse_pattern(a->pattern);
    opts.specials = a->specials;
    opts.min_frequency = a->min_frequency;
    auto t0 = std::chrono::steady_clock::now();
    Tokenizer t = train_bpe_files(a->inputs, opts);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t.save(a->output);
    log_info("[tokenizer] trained ", t.vocab_size(), " tokens in ", s, " s: wrote ", a->output);
  });

  auto* enc = tok->add_subcommand("encode", "Text to token ids");
  add_tokenizer_options(enc, *a);
  enc->add_option("--file", a->file, "Read the text from this file (default: TEXT or stdin)");
  enc->add_option("text", a->text, "The text");
  enc->add_option("--format", a->format, "json (one array) or lines (one id per line)")
      ->check(CLI::IsMember({"json", "lines"}))
      ->capture_default_str();
  enc->add_flag("--allow-special", a->allow_special, "Special-token text becomes its id");
  enc->add_flag("--add-special-tokens", a->add_special_tokens,
                "Add the post-processor's special tokens (BOS/EOS) as the model expects");
  enc->callback([a] {
    Tokenizer t = load_tokenizer(*a);
    auto ids = t.encode(read_input(*a), a->allow_special);
    if (a->add_special_tokens) ids = t.with_special_tokens(std::move(ids));
    if (a->format == "json") {
      std::cout << nlohmann::json(ids).dump() << "\n";
    } else {
      for (int32_t id : ids) std::cout << id << "\n";
    }
  });

  auto* dec = tok->add_subcommand("decode", "Token ids to text");
  add_tokenizer_options(dec, *a);
  dec->add_option("--file", a->file, "Read the ids from this file (default: IDS or stdin)");
  dec->add_option("ids", a->ids, "Ids (or one JSON array)");
  dec->callback([a] {
    Tokenizer t = load_tokenizer(*a);
    std::string in;
    for (const auto& s : a->ids) in += s + " ";
    if (in.empty()) in = read_input(*a);
    std::vector<int32_t> ids;
    size_t first = in.find_first_not_of(" \t\r\n");
    if (first != std::string::npos && in[first] == '[') {
      try {
        for (const auto& v : nlohmann::json::parse(in)) {
          KILN_CHECK(
              v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
              "tokenizer", "decode input ", v.dump(), " is not a token id (0 to ",
              t.vocab_size() - 1, ")");
          ids.push_back(v.get<int32_t>());
        }
      } catch (const std::exception& e) {
        fail("tokenizer", "decode input is not a JSON array of ids: ", e.what());
      }
    } else {
      std::istringstream is(in);
      std::string w;
      while (is >> w) {
        KILN_CHECK(!w.empty() && w.size() <= 10 &&
                       w.find_first_not_of("0123456789") == std::string::npos &&
                       std::stoll(w) <= INT32_MAX,
                   "tokenizer", "decode input '", w, "' is not a token id (0 to ",
                   t.vocab_size() - 1, ")");
        ids.push_back(int32_t(std::stoll(w)));
      }
    }
    std::cout << t.decode(ids);
    std::cout.flush();
  });

  auto* info = tok->add_subcommand("info", "Describe a tokenizer (one JSON line)");
  add_tokenizer_options(info, *a);
  info->callback([a] {
    TokenizerInfo i = load_tokenizer(*a).info();
    nlohmann::json j = {{"kind", i.kind},
                        {"pattern", i.pattern},
                        {"vocab_size", i.vocab_size},
                        {"merges", i.merges},
                        {"specials", i.specials.size()}};
    j["eos_id"] = i.eos ? nlohmann::json(*i.eos) : nlohmann::json(nullptr);
    j["pipeline"] = i.pipeline;
    nlohmann::json first = nlohmann::json::object();
    for (size_t k = 0; k < i.specials.size() && k < 8; ++k)
      first[i.specials[k].first] = i.specials[k].second;
    j["first_specials"] = first;
    std::cout << j.dump() << "\n";
  });

  auto* bench = tok->add_subcommand("bench", "Encode throughput (one JSON line with mb_per_s)");
  add_tokenizer_options(bench, *a);
  bench->add_option("--file", a->file, "Text to encode")->required()->check(CLI::ExistingFile);
  bench->add_option("--repeat", a->repeat, "Timed runs; the best is reported")
      ->capture_default_str();
  bench->callback([a] {
    auto t0 = std::chrono::steady_clock::now();
    Tokenizer t = load_tokenizer(*a);
    double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string text = read_file(a->file);
    // 64 kB documents at line ends: the same split for every thread count.
    auto docs = split_at_lines(text, 1 << 16);
    double best = 1e30;
    int64_t tokens = 0;
    for (int r = 0; r < std::max(1, a->repeat); ++r) {
      auto t1 = std::chrono::steady_clock::now();
      auto out = t.encode_batch(docs);
      best = std::min(best,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
      tokens = 0;
      for (const auto& ids : out) tokens += int64_t(ids.size());
    }
    nlohmann::json j = {
        {"tokenizer", a->tokenizer}, {"file", a->file},
        {"bytes", text.size()},      {"tokens", tokens},
        {"threads", num_threads()},  {"seconds", best},
        {"load_seconds", load_s},    {"mb_per_s", double(text.size()) / best / 1e6}};
    std::cout << j.dump() << "\n";
  });
});

}  // namespace
}  // namespace kiln::cli

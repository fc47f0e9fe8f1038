// kiln generate --model DIR --prompt "..." [sampling options]
// kiln eval --model DIR --text FILE
#include <cmath>
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/infer/generate.h"
#include "kiln/io/file.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/checkpoint.h"

namespace kiln::cli {
namespace {

Tokenizer load_model_tokenizer(const std::string& dir) {
  KILN_CHECK(file_exists(dir + "/tokenizer.json"), "model", "no tokenizer.json in '", dir,
             "': the checkpoint is incomplete");
  return Tokenizer::load(dir + "/tokenizer.json");
}

struct GenArgs {
  std::string model, prompt;
  int max_new_tokens = 128;
  SamplingParams sp;
  bool stats = false;
};

Command gen([](CLI::App& app) {
  auto a = std::make_shared<GenArgs>();
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained model");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory")->required();
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens to generate")
      ->capture_default_str();
  cmd->add_option("--temperature", a->sp.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a->sp.top_k, "Keep the k most likely tokens (0 = off)")
      ->capture_default_str();
  cmd->add_option("--top-p", a->sp.top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
  cmd->add_option("--seed", a->sp.seed, "Random seed")->capture_default_str();
  cmd->add_flag("--stats", a->stats, "Print timing to stderr");
  cmd->callback([a] {
    std::string dir = resolve_model_dir(a->model);
    auto model = load_model(dir);
    Tokenizer tok = load_model_tokenizer(dir);
    std::fputs(a->prompt.c_str(), stdout);
    auto r = generate(*model, tok, a->prompt, a->max_new_tokens, a->sp, [](const std::string& s) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs("\n", stdout);
    if (a->stats) {
      std::fprintf(stderr, "prompt %d tokens in %.3fs, generated %d tokens at %.1f tok/s\n",
                   r.prompt_tokens, r.prefill_s, r.generated_tokens,
                   r.generated_tokens / std::max(r.decode_s, 1e-9));
    }
  });
});

struct EvalArgs {
  std::string model, text;
  int seq_len = 0, batch = 4;
};

Command eval([](CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval", "Mean cross-entropy and perplexity on a text file");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory")->required();
  cmd->add_option("--text", a->text, "Text file")->required();
  cmd->add_option("--seq-len", a->seq_len, "Window length (default: the model's context)");
  cmd->add_option("--batch", a->batch, "Windows per batch")->capture_default_str();
  cmd->callback([a] {
    std::string dir = resolve_model_dir(a->model);
    auto model = load_model(dir);
    Tokenizer tok = load_model_tokenizer(dir);
    KILN_CHECK(file_exists(a->text), "eval", "cannot read '", a->text, "': no such file");
    const std::string text = read_file(a->text);
    const size_t file_size_bytes = text.size();
    std::vector<int32_t> ids = tok.encode(text);
    KILN_CHECK(ids.size() >= 2, "eval", "'", a->text, "' has fewer than 2 tokens");
    int T = a->seq_len > 0 ? a->seq_len : model->config().max_positions;
    T = std::min<int>(T, int(ids.size()) - 1);
    // Non-overlapping windows; the last partial window is padded with ignored targets.
    const int64_t windows = (int64_t(ids.size()) - 1 + T - 1) / T;
    const int B = int(std::min<int64_t>(a->batch, windows));
    TrainState ts(*model, B, T);
    std::vector<int32_t> x(size_t(B) * T), y(size_t(B) * T);
    double sum = 0;
    int64_t count = 0;
    for (int64_t w0 = 0; w0 < windows; w0 += B) {
      for (int b = 0; b < B; ++b) {
        for (int t = 0; t < T; ++t) {
          int64_t i = (w0 + b) * T + t;
          bool ok = w0 + b < windows && i + 1 < int64_t(ids.size());
          x[size_t(b) * T + t] = ok ? ids[i] : 0;
          y[size_t(b) * T + t] = ok ? ids[i + 1] : -1;
        }
      }
      double mean = ts.step(*model, x.data(), y.data(), nullptr);
      sum += mean * double(ts.counted_tokens());
      count += ts.counted_tokens();
    }
    double loss = sum / double(count);
    // Baseline: the entropy of the text's own token frequencies, i.e. the loss of the best
    // model that ignores context. A model that learned anything beats it.
    std::vector<int64_t> freq(model->config().vocab_size, 0);
    for (size_t i = 1; i < ids.size(); ++i) ++freq[ids[i]];
    double unigram = 0;
    for (int64_t f : freq)
      if (f > 0)
        unigram -=
            double(f) / double(ids.size() - 1) * std::log(double(f) / double(ids.size() - 1));
    // Bits per byte make models with different tokenizers comparable.
    const double bytes = double(file_size_bytes);
    std::printf(
        "{\"loss\":%.6f,\"perplexity\":%.4f,\"tokens\":%lld,\"bytes\":%.0f,"
        "\"bits_per_byte\":%.5f,\"unigram_entropy\":%.6f,\"unigram_bits_per_byte\":%.5f}\n",
        loss, std::exp(loss), (long long)count, bytes, loss * double(count) / bytes / std::log(2.0),
        unigram, unigram * double(ids.size() - 1) / bytes / std::log(2.0));
  });
});

}  // namespace
}  // namespace kiln::cli

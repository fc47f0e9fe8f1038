// kiln generate --model DIR --prompt "..." [decoding options]
// kiln eval --model DIR --text FILE
#include <chrono>
#include <cmath>
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/cli/load.h"
#include "kiln/core/error.h"
#include "kiln/infer/engine.h"
#include "kiln/infer/generate.h"
#include "kiln/io/file.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/tokenizer/tokenizer.h"
#include "kiln/train/checkpoint.h"

namespace kiln::cli {

// Decoding options shared by `generate` and `chat` (cmd_chat.cpp declares these two).
struct DecodingArgs {
  SamplingParams sp;
  StopConditions stop;
  std::vector<std::string> bias;  // "ID:BIAS"
};

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

// Parses the --logit-bias strings into sp.logit_bias.
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

Tokenizer load_model_tokenizer(const std::string& dir) {
  KILN_CHECK(file_exists(dir + "/tokenizer.json"), "model", "no tokenizer.json in '", dir,
             "': the checkpoint is incomplete");
  return Tokenizer::load(dir + "/tokenizer.json");
}

// What generate and chat run: a model, checkpoint or run directory, or a GGUF file (whose
// q8_0/q4_0 matrices stay quantized and run through quant::cpu::matmul).
LoadedModel load_for_inference(const std::string& path) {
  LoadedModel m;
  if (quant::is_gguf_path(path)) {
    quant::GgufModel g = quant::load_gguf_model(path, /*keep_quantized=*/true);
    m.model = std::move(g.model);
    m.tok = std::move(g.tokenizer);
    m.qweights = std::move(g.qweights);
  } else {
    const std::string dir = resolve_model_dir(path);
    m.model = load_model(dir);
    m.tok = load_model_tokenizer(dir);
  }
  return m;
}

namespace {

struct GenArgs {
  std::string model, prompt;
  DecodingArgs dec;
  bool stats = false;
};

void print_out(const std::string& s) {
  std::fputs(s.c_str(), stdout);
  std::fflush(stdout);
}

Command gen([](CLI::App& app) {
  auto a = std::make_shared<GenArgs>();
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a trained model");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory, or a GGUF file")
      ->required();
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  add_decoding_options(cmd, a->dec);
  cmd->add_flag("--stats", a->stats, "Print timing to stderr");
  cmd->callback([a] {
    finish_decoding_options(a->dec);
    validate(a->dec.sp);
    LoadedModel lm = load_for_inference(a->model);
    const std::unique_ptr<Model>& model = lm.model;
    const Tokenizer& tok = lm.tok;
    if (model->config().arch == Arch::gpt2) {
      // GPT-2 runs on the single-sequence decoder, which has the basic samplers only.
      const SamplingParams& sp = a->dec.sp;
      const StopConditions& st = a->dec.stop;
      KILN_CHECK(sp.min_p == 0 && sp.repetition_penalty == 1 && sp.presence_penalty == 0 &&
                     sp.frequency_penalty == 0 && sp.logit_bias.empty() && sp.n == 1 &&
                     sp.beams == 1 && st.stop_strings.empty() && st.stop_ids.empty() &&
                     !st.ignore_eos,
                 "generate",
                 "GPT-2 models support --temperature, --top-k, --top-p and --seed only; the "
                 "batched engine with the other options runs Llama-family models");
      print_out(a->prompt);
      auto r = generate(*model, tok, a->prompt, st.max_tokens, sp, print_out);
      std::fputs("\n", stdout);
      if (a->stats)
        std::fprintf(stderr, "prompt %d tokens in %.3fs, generated %d tokens at %.1f tok/s\n",
                     r.prompt_tokens, r.prefill_s, r.generated_tokens,
                     r.generated_tokens / std::max(r.decode_s, 1e-9));
      return;
    }
    std::vector<int32_t> ids = tok.encode(a->prompt);
    if (ids.empty() && tok.eos_id()) ids.push_back(*tok.eos_id());  // starts a document
    KILN_CHECK(!ids.empty(), "generate",
               "the prompt is empty and the tokenizer has no eos token to start from");
    EngineOptions opts;
    opts.max_running = std::max(a->dec.sp.n, a->dec.sp.beams);
    opts.max_context =
        std::min<int>(model->config().max_positions, int(ids.size()) + a->dec.stop.max_tokens);
    Engine eng(model->config(), quantized_weights(*model, lm.qweights), opts, &tok);
    const auto t0 = std::chrono::steady_clock::now();
    eng.add_request(ids, a->dec.sp, a->dec.stop);
    const bool stream = a->dec.sp.n == 1 && a->dec.sp.beams == 1;
    if (stream) print_out(a->prompt);
    int generated = 0;
    double first_s = 0;
    RequestResult res;
    while (!eng.idle()) {
      for (const TokenEvent& e : eng.step()) {
        generated += int(e.tokens.size());
        if (stream) print_out(e.text);
      }
      if (first_s == 0)
        first_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res = eng.run_all().at(0);
    if (stream) {
      std::fputs("\n", stdout);
    } else {
      for (size_t i = 0; i < res.samples.size(); ++i) {
        const SampleResult& s = res.samples[i];
        if (a->dec.sp.beams > 1) {
          std::printf("[beam %zu score %.4f logprob %.4f]\n", i, s.score, s.logprob);
        } else {
          std::printf("[sample %zu]\n", i);
        }
        std::printf("%s%s\n", a->prompt.c_str(), s.text.c_str());
      }
    }
    if (a->stats)
      std::fprintf(stderr, "prompt %d tokens in %.3fs, generated %d tokens at %.1f tok/s\n",
                   res.prompt_tokens, first_s, generated,
                   generated / std::max(total - first_s, 1e-9));
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

// kiln generate --model DIR --prompt "..." [decoding options] [--device cuda]
// kiln eval --model DIR --text FILE | --sft FILE
#include <chrono>
#include <cmath>
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/cli/decoding.h"
#include "kiln/cli/load.h"
#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/data/sft_dataset.h"
#include "kiln/infer/cuda_decoder.h"
#include "kiln/infer/engine.h"
#include "kiln/infer/evaluate.h"
#include "kiln/infer/generate.h"
#include "kiln/io/file.h"
#include "kiln/model/lora.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

Tokenizer load_model_tokenizer(const std::string& dir) {
  KILN_CHECK(file_exists(dir + "/tokenizer.json"), "model", "no tokenizer.json in '", dir,
             "': the checkpoint is incomplete");
  return Tokenizer::load(dir + "/tokenizer.json");
}

// What generate and chat run: a model, checkpoint or run directory, or a GGUF file (whose
// q8_0/q4_0 matrices stay quantized and run through quant::cpu::matmul).
LoadedModel load_for_inference(const std::string& path, const std::string& adapter) {
  LoadedModel m;
  if (quant::is_gguf_path(path)) {
    quant::GgufModel g = quant::load_gguf_model(path, /*keep_quantized=*/adapter.empty());
    m.model = std::move(g.model);
    m.tok = std::move(g.tokenizer);
    m.qweights = std::move(g.qweights);
  } else {
    const std::string dir = resolve_model_dir(path);
    m.model = load_model(dir);
    m.tok = load_model_tokenizer(dir);
  }
  if (!adapter.empty()) {
    const LoraAdapter lora = load_lora_adapter(adapter, *m.model);
    merge_lora(*m.model, lora);
    log_info("merged the LoRA adapter ", adapter, " (r ", lora.config.r, ", ", lora.layers.size(),
             " layers, scaling ", lora.config.scaling(), ")");
  }
  return m;
}

namespace {

struct GenArgs {
  std::string model, adapter, prompt;
  DecodingArgs dec;
  bool stats = false;
  std::string device = "cpu", precision = "bf16";
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
  cmd->add_option("--adapter", a->adapter, "A PEFT LoRA adapter directory, applied to --model");
  cmd->add_option("--prompt", a->prompt, "Prompt text")->required();
  add_decoding_options(cmd, a->dec);
  cmd->add_flag("--stats", a->stats, "Print timing to stderr");
  cmd->add_option("--device", a->device, "cpu | cuda (the engine's forward pass on the GPU)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--precision", a->precision, "With --device cuda: bf16 | fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->callback([a] {
    finish_decoding_options(a->dec);
    validate(a->dec.sp);
    LoadedModel lm = load_for_inference(a->model, a->adapter);
    const ModelConfig& cfg = lm.model->config();
    const int n = int(prompt_ids(lm.tok, a->prompt).size());
    const EngineOptions opts = single_request_options(cfg, n, a->dec.sp, a->dec.stop);
    std::unique_ptr<ForwardPass> pass;
    if (a->device == "cuda") {
      KILN_CHECK(lm.qweights.empty(), "generate", "--device cuda runs bf16/fp32 weights; give a ",
                 "model directory or an f32/f16 GGUF, or drop --device cuda for q8_0/q4_0");
      pass = make_cuda_forward_pass(*lm.model, context_length(cfg, opts), a->precision == "bf16");
    } else {
      pass = make_cpu_forward_pass(cfg, quantized_weights(*lm.model, lm.qweights),
                                   context_length(cfg, opts));
    }
    Engine eng(cfg, std::move(pass), opts, &lm.tok);
    const bool stream = a->dec.sp.n == 1 && a->dec.sp.beams == 1;
    if (stream) print_out(a->prompt);
    GenerateResult r = generate(eng, lm.tok, a->prompt, a->dec.sp, a->dec.stop, print_out);
    if (stream) {
      std::fputs("\n", stdout);
    } else {
      for (size_t i = 0; i < r.samples.size(); ++i) {
        const SampleResult& s = r.samples[i];
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
                   r.prompt_tokens, r.prefill_s, r.generated_tokens,
                   r.generated_tokens / std::max(r.decode_s, 1e-9));
  });
});

struct EvalArgs {
  std::string model, adapter, text, sft;
  int seq_len = 0, batch = 4, max_new_tokens = 64;
  int64_t limit = 0;
};

// --sft: greedy replies to held-out chat records, scored against their references.
void eval_replies(const EvalArgs& a) {
  LoadedModel lm = load_for_inference(a.model, a.adapter);
  const ModelConfig& cfg = lm.model->config();
  const ChatTemplate chat = find_chat_template(a.model, &lm.tok);
  const std::vector<SftTurn> turns = load_sft_turns(a.sft, chat, a.limit);
  std::vector<std::pair<std::string, std::string>> items;
  for (const SftTurn& t : turns) items.emplace_back(t.prompt, t.reply);
  EngineOptions opts;
  opts.max_running = 64;
  Engine eng(cfg,
             make_cpu_forward_pass(cfg, quantized_weights(*lm.model, lm.qweights),
                                   context_length(cfg, opts)),
             opts, &lm.tok);
  StopConditions stop;
  stop.max_tokens = a.max_new_tokens;
  stop.stop_strings = chat.stop_strings();
  const ReplyEval r = evaluate_replies(eng, lm.tok, items, stop);
  for (const auto& [want, got] : r.misses)
    std::fprintf(stderr, "expected %s\n     got %s\n", want.c_str(), got.c_str());
  std::printf("{\"examples\":%lld,\"exact_match\":%.4f,\"word_error_rate\":%.4f}\n",
              (long long)r.examples, r.exact_match(), r.word_error_rate());
}

Command eval([](CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand(
      "eval",
      "Mean cross-entropy and perplexity on a text file, or reply accuracy on chat records");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory (--sft: or GGUF)")
      ->required();
  cmd->add_option("--adapter", a->adapter, "A PEFT LoRA adapter directory, applied to --model");
  auto* text = cmd->add_option("--text", a->text, "Text file");
  auto* sft = cmd->add_option("--sft", a->sft,
                              "Chat records (JSONL, as kiln finetune reads): greedy replies to "
                              "each record's last turn, exact match and word error rate");
  text->excludes(sft);
  cmd->add_option("--seq-len", a->seq_len, "Window length (default: the model's context)");
  cmd->add_option("--batch", a->batch, "Windows per batch")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "--sft: tokens per reply at most")
      ->capture_default_str();
  cmd->add_option("--limit", a->limit, "--sft: the first N records only (0: all)");
  cmd->callback([a] {
    KILN_CHECK(!a->text.empty() || !a->sft.empty(), "eval", "give --text FILE or --sft FILE");
    if (!a->sft.empty()) return eval_replies(*a);
    KILN_CHECK(file_exists(a->text), "eval", "cannot read '", a->text, "': no such file");
    const LoadedModel lm = load_for_inference(a->model, a->adapter);
    const EvalResult r = evaluate_text(*lm.model, lm.tok, read_file(a->text), a->seq_len, a->batch);
    std::printf(
        "{\"loss\":%.6f,\"perplexity\":%.4f,\"tokens\":%lld,\"bytes\":%lld,"
        "\"bits_per_byte\":%.5f,\"unigram_entropy\":%.6f,\"unigram_bits_per_byte\":%.5f}\n",
        r.loss, r.perplexity(), (long long)r.tokens, (long long)r.bytes, r.bits_per_byte(),
        r.unigram_entropy, r.unigram_bits_per_byte());
  });
});

}  // namespace
}  // namespace kiln::cli

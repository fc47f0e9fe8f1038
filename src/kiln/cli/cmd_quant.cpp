// kiln quantize --model DIR --type q8_0|q4_0|q4_k_m|...|nf4 --output DIR2
// kiln export (--model DIR [--adapter LORA_DIR] | --model-config CONFIG.json [--seed S]) --format
// gguf
//     --type f32|f16|q8_0|q4_0|q4_k_m|... --output FILE.gguf
// (the K-quant mixes: q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k)
// kiln import --model FILE.gguf --output DIR
// kiln merge --model BASE --adapter LORA_DIR --output DIR
#include <cstdio>
#include <filesystem>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/model/lora.h"
#include "kiln/model/model_io.h"
#include "kiln/quant/gguf_model.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {
namespace {

struct QuantArgs {
  std::string model, model_config, adapter, type, output, format = "gguf";
  uint64_t seed = 0;
};

Command quantize_cmd([](CLI::App& app) {
  auto a = std::make_shared<QuantArgs>();
  auto* cmd = app.add_subcommand("quantize",
                                 "Quantize a model's weights (GGUF q8_0, q4_0 or a K-quant mix as "
                                 "llama-quantize makes it): writes a directory of config.json, "
                                 "tokenizer.json and model.gguf");
  cmd->add_option("--model", a->model, "Model, checkpoint or run directory")->required();
  cmd->add_option(
         "--type", a->type,
         "q8_0, q4_0, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m or q6_k "
         "(GGUF), or nf4 (bitsandbytes' 4-bit safetensors)")
      ->required();
  cmd->add_option("--output", a->output, "Output directory (must not exist)")->required();
  cmd->callback([a] {
    if (a->type == "nf4") {
      quant::quantize_model_dir_nf4(resolve_model_dir(a->model), a->output);
      std::printf("wrote %s (nf4)\n", a->output.c_str());
      return;
    }
    const quant::GgufType t = quant::gguf_type_from_name(a->type);
    KILN_CHECK(t != quant::GgufType::f32 && t != quant::GgufType::f16, "quantize", "--type '",
               a->type, "' is not a quantization: use kiln export for f32/f16");
    quant::quantize_model_dir(resolve_model_dir(a->model), t, a->output);
    std::printf("wrote %s (%s)\n", a->output.c_str(), a->type.c_str());
  });
});

Command export_cmd([](CLI::App& app) {
  auto a = std::make_shared<QuantArgs>();
  auto* cmd = app.add_subcommand("export", "Export a model to another format (GGUF for llama.cpp)");
  auto* model = cmd->add_option("--model", a->model, "Model, checkpoint or run directory");
  cmd->add_option("--model-config", a->model_config,
                  "Hugging Face config.json: random weights and a byte-level tokenizer (for "
                  "speed benchmarks of any size without training)")
      ->excludes(model);
  cmd->add_option("--seed", a->seed, "Seeds the random weights of --model-config")
      ->capture_default_str();
  cmd->add_option("--adapter", a->adapter,
                  "A PEFT LoRA adapter (or LoRA run) directory, merged into --model first")
      ->needs(model);
  cmd->add_option("--format", a->format, "gguf")->capture_default_str();
  cmd->add_option("--type", a->type,
                  "f32, f16, q8_0, q4_0 or a K-quant mix: q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, "
                  "q4_k_m, q5_k_s, q5_k_m, q6_k")
      ->required();
  cmd->add_option("--output", a->output, "Output file (.gguf)")->required();
  cmd->callback([a] {
    KILN_CHECK(!a->model.empty() || !a->model_config.empty(), "export",
               "give --model DIR or --model-config CONFIG.json");
    KILN_CHECK(a->format == "gguf", "export", "--format '", a->format, "': only gguf is supported");
    const quant::GgufType t = quant::gguf_type_from_name(a->type);
    if (!a->model_config.empty()) {
      Model model(load_model_config(a->model_config));
      model.init_weights(a->seed);
      quant::export_gguf(model, Tokenizer::byte_level({"<|endoftext|>"}), a->output, t, "");
    } else {
      const std::string dir = resolve_model_dir(a->model);
      KILN_CHECK(file_exists(dir + "/tokenizer.json"), "export", "no tokenizer.json in '", dir,
                 "': the checkpoint is incomplete");
      auto model = load_model(dir);
      if (!a->adapter.empty()) merge_lora(*model, load_lora_adapter(a->adapter, *model));
      Tokenizer tok = Tokenizer::load(dir + "/tokenizer.json");
      quant::export_gguf(*model, tok, a->output, t, chat_template_source(dir));
    }
    std::printf("wrote %s (%s)\n", a->output.c_str(), a->type.c_str());
  });
});

Command import_cmd([](CLI::App& app) {
  auto a = std::make_shared<QuantArgs>();
  auto* cmd = app.add_subcommand("import",
                                 "Convert a GGUF (llama; f32, f16, bf16 or any quant type kiln "
                                 "reads) to a Hugging Face model directory");
  cmd->add_option("--model", a->model, "GGUF file or kiln quantize directory")->required();
  cmd->add_option("--output", a->output, "Output directory")->required();
  cmd->callback([a] {
    quant::GgufModel g = quant::load_gguf_model(a->model, /*keep_quantized=*/false);
    save_model(*g.model, a->output);
    g.tokenizer.save(a->output + "/tokenizer.json");
    std::printf("wrote %s\n", a->output.c_str());
  });
});

struct MergeArgs {
  std::string model, adapter, output;
};

Command merge_cmd([](CLI::App& app) {
  auto a = std::make_shared<MergeArgs>();
  auto* cmd = app.add_subcommand(
      "merge", "Merge a PEFT LoRA adapter into its base: writes a Hugging Face model directory");
  cmd->add_option("--model", a->model, "Base model, checkpoint or run directory")->required();
  cmd->add_option("--adapter", a->adapter, "PEFT LoRA adapter directory")->required();
  cmd->add_option("--output", a->output, "Output directory (must not exist)")->required();
  cmd->callback([a] {
    KILN_CHECK(!file_exists(a->output), "merge", "'", a->output,
               "' exists; give a new directory (nothing is overwritten)");
    const std::string dir = resolve_model_dir(a->model);
    auto model = load_model(dir);
    const LoraAdapter lora = load_lora_adapter(a->adapter, *model);
    merge_lora(*model, lora);
    // Written beside the output, then renamed: a failed merge leaves no half directory.
    const std::string tmp = a->output + ".tmp";
    std::filesystem::remove_all(tmp);
    save_model(*model, tmp);
    Tokenizer::load(dir + "/tokenizer.json").save(tmp + "/tokenizer.json");
    if (file_exists(dir + "/tokenizer_config.json"))
      std::filesystem::copy_file(dir + "/tokenizer_config.json", tmp + "/tokenizer_config.json");
    std::filesystem::rename(tmp, a->output);
    std::printf("wrote %s (%zu layers merged, r %d, scaling %g)\n", a->output.c_str(),
                lora.layers.size(), lora.config.r, double(lora.config.scaling()));
  });
});

}  // namespace
}  // namespace kiln::cli

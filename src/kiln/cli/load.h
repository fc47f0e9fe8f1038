// Loading what the inference commands (generate, chat) run; defined in cmd_generate.cpp.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "kiln/model/transformer.h"
#include "kiln/quant/qtensor.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::cli {

struct LoadedModel {
  std::unique_ptr<Model> model;
  Tokenizer tok;
  std::map<std::string, quant::QTensor> qweights;  // HF name -> quantized matrix (GGUF only)
};

// The tokenizer.json of a model directory; an error names the directory if it is missing.
Tokenizer load_model_tokenizer(const std::string& dir);
// A model, checkpoint or run directory, or a GGUF file (quantized matrices kept quantized). With
// `adapter` (a PEFT LoRA directory, model/lora.h) the adapter is merged into the weights in
// memory (a quantized GGUF's are dequantized first); nothing is written.
LoadedModel load_for_inference(const std::string& path, const std::string& adapter = "");

}  // namespace kiln::cli

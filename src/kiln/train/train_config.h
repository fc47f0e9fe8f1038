// The training configuration: a YAML file plus dotted command-line overrides
// (`kiln train configs/quickstart.yaml optim.lr=1e-3`). Every key is known; a typo is an error
// naming the key. The model section uses Hugging Face config.json names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/model/config.h"
#include "kiln/model/lora.h"
#include "kiln/model/precision.h"
#include "kiln/train/loss_scaler.h"

namespace kiln {

// Where the model trains (the config's `device`: core's Device) and the learning-rate schedule's
// shape after warmup (`optim.schedule`, schedule.h): parsed once, when the config is read.
enum class LrSchedule { cosine, linear, constant };
// "cpu" | "cuda", and "cosine" | "linear" | "constant"; otherwise throw naming the choices and
// `source` (the config file) when given.
Device device_from_name(const std::string& name, const std::string& source = "");
LrSchedule lr_schedule_from_name(const std::string& name, const std::string& source = "");
const char* name_of(LrSchedule s);

struct TrainConfig {
  std::string run_dir = "runs/default";
  uint64_t seed = 1337;
  int threads = 0;  // 0 = all cores
  // Where the model trains: "cpu" (default) or "cuda" (one GPU per rank; needs a kiln built with
  // the CUDA backend and a GPU). With cuda, train.precision bf16 runs bf16 activations and GEMMs on
  // tensor cores, fp32 exact fp32 GEMMs (train.tf32: true allows TF32 tensor cores).
  Device device = Device::cpu;

  ModelConfig model;
  bool vocab_from_tokenizer = false;  // model.vocab_size omitted: take the tokenizer's
  // Optional: a checkpoint directory, run directory or GGUF file whose weights (and, unless
  // data.tokenizer says otherwise, tokenizer) start the run. `model: {base: DIR}` says the same.
  std::string init_from;
  // Fine-tuning (`kiln finetune`): full (every weight trains), lora (the base frozen, a PEFT
  // LoRA adapter trains; checkpoints hold the adapter) or qlora (lora over a base whose linear
  // weights are held in NF4, model/nf4_base.h, and dequantized for each GEMM at the run's
  // precision: bf16, as QLoRA computes, or fp32).
  std::string method = "full";
  bool trains_adapter() const { return method == "lora" || method == "qlora"; }
  // method lora and qlora: PEFT's LoraConfig (r, lora_alpha, lora_dropout, target_modules,
  // use_rslora) under the names lora.r, lora.alpha, lora.dropout, lora.target_modules (a list, or
  // one name such as all-linear; empty: PEFT's default for the architecture) and lora.rslora.
  LoraConfig lora;

  struct Data {
    std::vector<std::string> train;  // text files, concatenated in order
    std::string val;                 // optional held-out text file
    double val_fraction = 0.05;      // used when `val` is empty: the tail of the training text
    // "byte", a tokenizer file (tokenizer.json, .tiktoken), or empty: init_from's tokenizer when
    // there is one, else "byte"
    std::string tokenizer;
    // Megatron indexed datasets instead of text: [0.7, data/a, 0.3, data/b] (kiln data tokenize)
    std::vector<std::string> blend;
    std::string split = "98,2,0";  // train, validation, test shares of each dataset's documents
    // No files: uniform random token ids over model.vocab_size from the seed (Megatron's
    // --mock-data), for benchmarks and tests of the parallel layouts.
    bool mock = false;
    // Supervised fine-tuning: JSONL chat records (data/sft_dataset.h) instead of text. Each
    // example is one row of train.seq_len tokens; loss "assistant" (the replies and completions
    // only) or "all"; chat_template renders `messages`: empty (the base model's, else guanaco),
    // "guanaco", "chatml", or a file holding a Jinja template.
    std::vector<std::string> sft;
    int max_seq_length = 0;  // 0: train.seq_len + 1
    bool packing = false;    // data.sft: several examples per row (SftSpec::packing)
    std::string loss = "assistant";
    std::string chat_template;
  } data;

  struct Train {
    int steps = 1000;
    int batch_size = 8;  // sequences per micro-batch
    int seq_len = 256;
    int grad_accum = 1;  // micro-batches per optimizer step
    int eval_every = 100;
    int eval_batches = 10;
    int checkpoint_every = 500;
    bool final_checkpoint = true;  // also at the last step (benchmarks turn it off)
    int keep_checkpoints = 2;
    int log_every = 1;  // metrics.jsonl gets every step; the progress line redraws
    int samples = 2;    // sample generations printed at the end
    int sample_tokens = 200;
    Precision precision = Precision::fp32;
    bool tf32 = false;  // device cuda, precision fp32: let fp32 GEMMs use TF32 tensor cores
    Recompute recompute = Recompute::none;
    int recompute_layers = -1;  // layers (from the first) that recompute; -1 = all
    int max_skips = 10;         // consecutive skipped steps (non-finite / overflow) before stopping
    std::vector<int64_t>
        inject_overflow_at;                 // testing aid: treat these steps' first try as overflow
    std::string checkpoint_dtype = "fp32";  // fp32 | bf16 (model weights; masters stay fp32)
  } train;

  LossScaleConfig loss_scale;  // fp16 only

  // The layout under mpirun/srun: world = dp x tp x pp, dp derived (Megatron-Core's rank order,
  // dist/groups.h). Pipeline micro-batches are train.grad_accum; train.batch_size is the global
  // micro-batch, split over the dp ranks.
  struct Parallel {
    int tp = 1;                      // tensor-parallel ranks (divide the heads and kv heads)
    int pp = 1;                      // pipeline stages (divide the layers)
    int ep = 1;  // expert-parallel ranks: split a MoE model's experts (divide dp and the experts)
    int zero = 0;                    // 0 plain DP, 1 optimizer state, 2 + gradients, 3 + weights
    bool sequence_parallel = false;  // with tp > 1: norms and residuals on 1/tp of the tokens
    std::string schedule = "1f1b";   // pipeline schedule: 1f1b | gpipe
    double bucket_mb = 4;            // gradient all-reduce bucket size (overlapped with backward)
    double timeout_s = 300;          // a collective waiting longer ends the job naming the rank
    std::string checkpoint = "gathered";  // gathered (one HF checkpoint) | sharded (per rank)
  } parallel;

  struct Optim {
    float lr = 1e-3f;
    float min_lr = 1e-4f;
    int warmup_steps = 100;
    LrSchedule schedule = LrSchedule::cosine;
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    float weight_decay = 0.1f;
    float grad_clip = 1.0f;  // global-norm clipping; 0 disables
  } optim;

  std::string yaml;  // the resolved configuration, as written to RUN_DIR/config.yaml
};

// Reads `path`, applies "dotted.key=value" overrides, validates. Errors name the file and key.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace kiln

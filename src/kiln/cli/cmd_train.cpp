// kiln train CONFIG.yaml [dotted.key=value ...] [--resume]
// kiln finetune CONFIG.yaml [...]: the same trainer, starting from model.base (a checkpoint, run
// directory or GGUF file), usually on SFT data (data.sft); configs/finetune.yaml is an example.
#include "kiln/cli/command.h"
#include "kiln/cli/mpi_world.h"
#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/dist/launch.h"
#include "kiln/train/train_config.h"
#include "kiln/train/trainer.h"

namespace kiln::cli {
namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  bool resume = false;
};

void add_train_command(CLI::App& app, const char* name, const char* about, bool finetune) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand(name, about);
  cmd->add_option("config", args->config, "YAML config (see configs/)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("overrides", args->overrides,
                  "Overrides: section.key=value (e.g. optim.lr=1e-3)");
  cmd->add_flag("--resume", args->resume, "Continue from the newest checkpoint in run_dir");
  cmd->callback([args, finetune] {
    TrainConfig cfg = load_train_config(args->config, args->overrides);
    KILN_CHECK(!finetune || !cfg.init_from.empty(), "finetune", args->config,
               ": fine-tuning starts from a model; set model: {base: DIR} (a checkpoint, run "
               "directory or GGUF file), or use kiln train to train from scratch");
    // Under mpirun / srun (several ranks): the parallel layout over MPI_COMM_WORLD.
    if (dist::launched_world_size() > 1) {
      run_on_mpi_world(cfg.parallel.timeout_s, [&](dist::Comm& comm) {
        TrainResult r = train(cfg, args->resume, &comm);
        if (comm.rank() == 0)
          log_info("done: ", r.steps, " steps on ", comm.size(), " ranks, loss ", r.final_loss,
                   ", val_loss ", r.final_val_loss, "; checkpoint ", r.checkpoint);
      });
      return;
    }
    TrainResult r = train(cfg, args->resume);
    log_info("done: ", r.steps, " steps, loss ", r.final_loss, ", val_loss ", r.final_val_loss,
             "; checkpoint ", r.checkpoint);
  });
}

Command reg([](CLI::App& app) {
  add_train_command(app, "train", "Train a model from a YAML config", false);
  add_train_command(app, "finetune",
                    "Fine-tune a model (model.base) on chat data (data.sft) from a YAML config",
                    true);
});

}  // namespace
}  // namespace kiln::cli

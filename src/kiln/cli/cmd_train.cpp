// kiln train CONFIG.yaml [dotted.key=value ...] [--resume]
#include <cstdlib>
#include "kiln/cli/command.h"

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#ifdef KILN_HAVE_MPI
#include "kiln/dist/mpi_comm.h"
#endif
#include "kiln/train/train_config.h"
#include "kiln/train/trainer.h"

namespace kiln::cli {
namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  bool resume = false;
};

Command reg([](CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train a model from a YAML config");
  cmd->add_option("config", args->config, "YAML config (see configs/)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("overrides", args->overrides,
                  "Overrides: section.key=value (e.g. optim.lr=1e-3)");
  cmd->add_flag("--resume", args->resume, "Continue from the newest checkpoint in run_dir");
  cmd->callback([args] {
    TrainConfig cfg = load_train_config(args->config, args->overrides);
    // Under mpirun / srun (several ranks): the parallel: layout over MPI_COMM_WORLD.
    const char* world = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (!world) world = std::getenv("PMI_SIZE");
    if (world && std::atoi(world) > 1) {
#ifdef KILN_HAVE_MPI
      dist::MpiRuntime mpi(nullptr, nullptr);
      auto comm = dist::MpiComm::world();
      TrainResult r = train(cfg, args->resume, comm.get());
      if (comm->rank() == 0)
        log_info("done: ", r.steps, " steps on ", comm->size(), " ranks (tp ", cfg.parallel.tp,
                 ", dp ", comm->size() / cfg.parallel.tp, "), loss ", r.final_loss, ", val_loss ",
                 r.final_val_loss, "; checkpoint ", r.checkpoint);
      return;
#else
      fail("train", "launched on ", world, " ranks but this kiln was built without MPI; ",
           "run scripts/setup.sh (installs Open MPI) and rebuild");
#endif
    }
    TrainResult r = train(cfg, args->resume);
    log_info("done: ", r.steps, " steps, loss ", r.final_loss, ", val_loss ", r.final_val_loss,
             "; checkpoint ", r.checkpoint);
  });
});

}  // namespace
}  // namespace kiln::cli

// kiln plot RUN_DIR... --output curves.svg|curves.png [--x steps|tokens]
#include "kiln/cli/command.h"
#include "kiln/core/log.h"
#include "kiln/train/plot.h"

namespace kiln::cli {
namespace {

Command reg([](CLI::App& app) {
  auto runs = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>("curves.svg");
  auto axis = std::make_shared<std::string>("steps");
  auto* cmd = app.add_subcommand("plot", "Draw loss curves of one or more runs as SVG");
  cmd->add_option("runs", *runs, "Run directories (with metrics.jsonl)")->required();
  cmd->add_option("--output,-o", *out, "Output .svg or .png")->capture_default_str();
  cmd->add_option("--x", *axis, "x axis: steps or tokens")
      ->check(CLI::IsMember({"steps", "tokens"}))
      ->capture_default_str();
  cmd->callback([runs, out, axis] {
    plot_runs(*runs, *out, *axis == "tokens" ? PlotAxis::tokens : PlotAxis::steps);
    log_info("wrote ", *out);
  });
});

}  // namespace
}  // namespace kiln::cli

// kiln <command> ...: parses arguments and dispatches. Commands live in cmd_*.cpp.
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"

int main(int argc, char** argv) {
  CLI::App app{
      "kiln: curate, tokenize, train, fine-tune, evaluate, quantize, export, run and serve LLMs"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every command");
  app.fallthrough();  // global options (--threads) may follow the subcommand
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  for (auto& setup : kiln::cli::Command::registry()) setup(app);
  app.parse_complete_callback([&] { kiln::set_num_threads(threads); });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const kiln::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}

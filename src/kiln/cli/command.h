// Subcommands register themselves: each cmd_*.cpp defines a static Command with a setup
// function that adds its CLI11 subcommand. main.cpp only parses and dispatches.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <vector>

namespace kiln::cli {

struct Command {
  // Adds a subcommand to `app` and sets its callback.
  using Setup = std::function<void(CLI::App& app)>;
  explicit Command(Setup setup) { registry().push_back(std::move(setup)); }
  static std::vector<Setup>& registry() {
    static std::vector<Setup> r;
    return r;
  }
};

}  // namespace kiln::cli

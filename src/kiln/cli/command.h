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

// The parent subcommand `name` (e.g. "data", "bench"), created on first use, so commands in
// different files can share it: group(app, "data", "...")->add_subcommand("curate", ...).
inline CLI::App* group(CLI::App& app, const std::string& name, const std::string& description) {
  for (CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    if (sub->get_name() == name) return sub;
  CLI::App* sub = app.add_subcommand(name, description);
  sub->require_subcommand(1);
  return sub;
}

}  // namespace kiln::cli

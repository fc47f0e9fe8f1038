// Shared by the multi-rank training tests (tests/cli/test_train_*.cpp, test_bench_dist.cpp): the
// small corpus they train on and the mpirun they launch through.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/core/rng.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln::test {

// 20000 words drawn from 8, a sentence ending every 9: enough text for tiny models to learn from
// in a few steps, the same bytes in every test.
inline std::string word_corpus() {
  const char* words[] = {"the", "cat", "sees", "a", "dog", "river", "stone", "light"};
  Rng rng(1);
  std::string text;
  for (int i = 0; i < 20000; ++i)
    text += std::string(words[rng.below(8)]) + (i % 9 == 8 ? ".\n" : " ");
  return text;
}

// The loss of every step a run recorded in RUN/metrics.jsonl, in order.
inline std::vector<double> run_losses(const std::string& run) {
  std::vector<double> out;
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return out;
}

// The mpirun command line the tests use: any number of ranks on this machine (oversubscribed),
// as root, over shared memory, killed after timeout_s.
inline std::string mpirun_command(int np, int timeout_s = 180) {
  return "timeout " + std::to_string(timeout_s) +
         " mpirun --oversubscribe --allow-run-as-root --mca btl self,vader -np " +
         std::to_string(np) + " ";
}

}  // namespace kiln::test

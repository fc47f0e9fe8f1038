// Loss curves as an SVG picture: training and validation loss, learning rate and throughput
// against steps, one color per run. Reads RUN_DIR/metrics.jsonl.
#pragma once

#include <string>
#include <vector>

namespace kiln {

// Writes the SVG to `output` atomically. Throws if a run has no metrics.
void plot_runs(const std::vector<std::string>& run_dirs, const std::string& output);

}  // namespace kiln

// Loss curves as a picture: training and validation loss, learning rate and throughput against
// steps or tokens, one color per run, with a legend. Reads RUN_DIR/metrics.jsonl; draws with
// cairo, to SVG or PNG by the output's extension.
#pragma once

#include <string>
#include <vector>

namespace kiln {

enum class PlotAxis { steps, tokens };

// Writes the picture to `output` (.svg or .png) atomically. Throws if a run has no metrics.
void plot_runs(const std::vector<std::string>& run_dirs, const std::string& output,
               PlotAxis x = PlotAxis::steps);

}  // namespace kiln

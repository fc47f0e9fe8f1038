// The curation recipe: an ordered list of steps with their thresholds, read from YAML
// (configs/curate.yaml writes out every default). Unknown keys and step names are errors that
// name the key, the step and the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/data/curate_text.h"
#include "kiln/data/filters.h"
#include "kiln/data/minhash.h"
#include "kiln/data/pii.h"

namespace YAML {
class Node;
}

namespace kiln::curate {

enum class StepKind {
  normalize,
  gopher_quality,
  gopher_repetition,
  c4,
  fineweb,
  exact_dedup,
  fuzzy_dedup,
  pii
};
const char* to_string(StepKind k);

// One step; only the settings of its kind are used.
struct Step {
  StepKind kind = StepKind::normalize;
  NormalizeConfig normalize;
  GopherQualityConfig gopher_quality;
  GopherRepetitionConfig gopher_repetition;
  C4Config c4;
  FineWebConfig fineweb;
  MinHashConfig fuzzy;
  PiiConfig pii;
  // Dedup steps are global (they see every document); the others see one document at a time.
  bool per_document() const {
    return kind != StepKind::exact_dedup && kind != StepKind::fuzzy_dedup;
  }
};

struct CurateConfig {
  std::vector<Step> steps;
  std::string text_field = "text";
  uint64_t max_line_bytes = 64ull << 20;  // longer lines are bad input (line_too_long)
  int batch_docs = 4096;                  // documents per parallel batch: bounds memory
};

// All steps with the published defaults, in datatrove's FineWeb order: normalize, exact_dedup,
// gopher_repetition, gopher_quality, c4, fineweb, fuzzy_dedup, pii.
CurateConfig default_curate_config();
// A default step of `kind`.
Step default_step(StepKind kind);
// Parses a YAML recipe; `source` (the file name) is used in error messages.
CurateConfig parse_curate_config(const YAML::Node& root, const std::string& source);
CurateConfig load_curate_config(const std::string& path);
// Default steps named in a comma-separated list: "normalize,fuzzy_dedup".
CurateConfig config_from_step_list(const std::string& list);

}  // namespace kiln::curate

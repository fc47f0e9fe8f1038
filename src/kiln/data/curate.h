// kiln data curate: JSONL in, cleaned JSONL out. Documents stream through the configured steps
// (curate_config.h) in batches of batch_docs over the thread pool; exact dedup keeps a 64-bit hash
// per distinct document, fuzzy dedup keeps its LSH index and spools the documents that reach it
// to a temp file beside the output, then makes a second pass once every cluster is known.
// Output, rejected file and report are written atomically: they appear only when complete.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/data/curate_config.h"
#include "kiln/data/jsonl.h"
#include "kiln/data/pii.h"

namespace kiln::curate {

struct CurateOptions {
  std::vector<std::string> inputs;  // .jsonl or .jsonl.zst
  std::string output;               // cleaned JSONL
  std::string rejected;             // optional: rejected documents with "step" and "reason"
  std::string report;               // report JSON; default: <output without .jsonl>.report.json
  CurateConfig config;
  bool strict = false;   // fail on the first bad input line instead of skipping it
  bool progress = true;  // progress line on stderr
};

struct StepStats {
  std::string name;
  int64_t docs_in = 0, docs_out = 0, bytes_in = 0, bytes_out = 0;  // bytes of text
  std::map<std::string, int64_t> reasons;                          // rejections by reason
  int64_t clusters = 0;  // dedup steps: groups of two or more documents
};

struct CurateReport {
  std::vector<std::string> inputs;
  int64_t docs_read = 0, bytes_read = 0;  // lines read and their bytes (all input, bad included)
  int64_t docs_written = 0, bytes_written = 0;  // output lines and their bytes
  int64_t docs_rejected = 0;
  std::vector<StepStats> steps;
  PiiCounts pii;
  JsonlErrors errors;
  double seconds = 0;
  int threads = 1;
  nlohmann::json to_json() const;
  std::string table() const;  // the human summary
};

// Runs the pipeline. Throws kiln::Error on unreadable input, on bad input in strict mode, and on
// write errors; the output path is then untouched.
CurateReport run_curate(const CurateOptions& opts);

// The default report path for an output path: "dir/clean.jsonl" -> "dir/clean.report.json".
std::string default_report_path(const std::string& output);

}  // namespace kiln::curate

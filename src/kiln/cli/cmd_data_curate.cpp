// kiln data curate --input FILES... --output clean.jsonl [--config curate.yaml]
//                  [--rejected rejected.jsonl] [--report report.json] [--text-field text]
//                  [--steps normalize,exact_dedup,...] [--strict] [--threads N]
#include <cstdio>

#include "kiln/cli/command.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/curate.h"

namespace kiln::cli {
namespace {

struct CurateArgs {
  curate::CurateOptions opts;
  std::string config, text_field, steps;
  int threads = 0;
  uint64_t max_line_bytes = 0;
};

Command reg([](CLI::App& app) {
  CLI::App* data = group(app, "data", "Curate and tokenize datasets");  // shared with tokenize
  auto a = std::make_shared<CurateArgs>();
  auto* cmd = data->add_subcommand(
      "curate",
      "Clean JSONL text: normalize, quality filters, exact and fuzzy dedup, PII redaction");
  cmd->add_option("--input,-i", a->opts.inputs, "Input .jsonl or .jsonl.zst files")->required();
  cmd->add_option("--output,-o", a->opts.output, "Cleaned JSONL output")->required();
  cmd->add_option("--config,-c", a->config,
                  "Recipe YAML (default: every step with its defaults; "
                  "see configs/curate.yaml)");
  cmd->add_option("--rejected", a->opts.rejected,
                  "Write rejected documents here, with step and reason");
  cmd->add_option("--report", a->opts.report,
                  "Report JSON (default: OUTPUT without .jsonl + .report.json)");
  cmd->add_option("--text-field", a->text_field, "JSON field holding the text (default: text)");
  cmd->add_option("--steps", a->steps,
                  "Comma-separated steps with default settings, instead of a recipe "
                  "(e.g. fuzzy_dedup for MinHash alone)");
  cmd->add_option("--max-line-bytes", a->max_line_bytes, "Longer lines are skipped as bad input");
  cmd->add_flag("--strict", a->opts.strict,
                "Fail on the first bad input line instead of skipping it");
  cmd->add_option("--threads", a->threads, "Threads (default: all cores)");
  cmd->callback([a] {
    if (a->threads > 0) set_num_threads(a->threads);
    KILN_CHECK(a->config.empty() || a->steps.empty(), "curate",
               "--config and --steps exclude each ", "other: list the steps in the recipe instead");
    curate::CurateConfig cfg =
        a->config.empty() ? curate::default_curate_config() : curate::load_curate_config(a->config);
    if (!a->steps.empty()) cfg = curate::config_from_step_list(a->steps);
    if (!a->text_field.empty()) cfg.text_field = a->text_field;
    if (a->max_line_bytes > 0) cfg.max_line_bytes = a->max_line_bytes;
    a->opts.config = cfg;
    curate::CurateReport r = curate::run_curate(a->opts);
    std::fputs(r.table().c_str(), stdout);
    std::string report =
        a->opts.report.empty() ? curate::default_report_path(a->opts.output) : a->opts.report;
    log_info("wrote ", a->opts.output, " and ", report);
  });
});

}  // namespace
}  // namespace kiln::cli

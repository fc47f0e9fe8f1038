#include "kiln/data/curate_config.h"

#include <yaml-cpp/yaml.h>

#include "kiln/core/error.h"
#include "kiln/io/config_section.h"
#include "kiln/io/file.h"

namespace kiln::curate {
namespace {

constexpr StepKind kAllKinds[] = {
    StepKind::normalize, StepKind::gopher_quality, StepKind::gopher_repetition, StepKind::c4,
    StepKind::fineweb,   StepKind::exact_dedup,    StepKind::fuzzy_dedup,       StepKind::pii};

// {n: fraction, ...}, e.g. top_n_grams: {2: 0.2, 3: 0.18}
void read_ngrams(ConfigSection& f, const char* key, std::vector<NgramThreshold>& value) {
  const YAML::Node m = f.take(key);
  if (!m || m.IsNull()) return;
  if (!m.IsMap()) f.bad_value(key, "must be a map from n to a fraction, e.g. {2: 0.2, 3: 0.18}");
  value.clear();
  try {
    for (auto it = m.begin(); it != m.end(); ++it)
      value.push_back({it->first.as<int>(), it->second.as<double>()});
  } catch (const YAML::Exception&) {
    f.bad_value(key, "must map integers to fractions");
  }
}

void read_step(Step& s, const YAML::Node& node, const std::string& where) {
  ConfigSection f(node, "curate config", where);
  switch (s.kind) {
    case StepKind::normalize:
      f.get("nfc", s.normalize.nfc);
      f.get("remove_control", s.normalize.remove_control);
      f.get("whitespace", s.normalize.whitespace);
      break;
    case StepKind::gopher_quality: {
      auto& c = s.gopher_quality;
      f.get("min_doc_words", c.min_doc_words);
      f.get("max_doc_words", c.max_doc_words);
      f.get("min_avg_word_length", c.min_avg_word_length);
      f.get("max_avg_word_length", c.max_avg_word_length);
      f.get("max_symbol_word_ratio", c.max_symbol_word_ratio);
      f.get("max_bullet_lines_ratio", c.max_bullet_lines_ratio);
      f.get("max_ellipsis_lines_ratio", c.max_ellipsis_lines_ratio);
      f.get("max_non_alpha_words_ratio", c.max_non_alpha_words_ratio);
      f.get("min_stop_words", c.min_stop_words);
      f.get("stop_words", c.stop_words);
      f.get("bullets", c.bullets);
      break;
    }
    case StepKind::gopher_repetition: {
      auto& c = s.gopher_repetition;
      f.get("dup_line_frac", c.dup_line_frac);
      f.get("dup_para_frac", c.dup_para_frac);
      f.get("dup_line_char_frac", c.dup_line_char_frac);
      f.get("dup_para_char_frac", c.dup_para_char_frac);
      read_ngrams(f, "top_n_grams", c.top_n_grams);
      read_ngrams(f, "dup_n_grams", c.dup_n_grams);
      break;
    }
    case StepKind::c4: {
      auto& c = s.c4;
      f.get("remove_citations", c.remove_citations);
      f.get("filter_no_terminal_punct", c.filter_no_terminal_punct);
      f.get("min_num_sentences", c.min_num_sentences);
      f.get("min_words_per_line", c.min_words_per_line);
      f.get("max_word_length", c.max_word_length);
      f.get("filter_lorem_ipsum", c.filter_lorem_ipsum);
      f.get("filter_javascript", c.filter_javascript);
      f.get("filter_curly_bracket", c.filter_curly_bracket);
      f.get("filter_policy", c.filter_policy);
      break;
    }
    case StepKind::fineweb: {
      auto& c = s.fineweb;
      f.get("line_punct_thr", c.line_punct_thr);
      f.get("line_punct_exclude_zero", c.line_punct_exclude_zero);
      f.get("short_line_thr", c.short_line_thr);
      f.get("short_line_length", c.short_line_length);
      f.get("char_duplicates_ratio", c.char_duplicates_ratio);
      f.get("new_line_ratio", c.new_line_ratio);
      break;
    }
    case StepKind::exact_dedup:
      break;
    case StepKind::fuzzy_dedup: {
      auto& c = s.fuzzy;
      f.get("ngram", c.ngram);
      f.get("bands", c.bands);
      f.get("rows", c.rows);
      f.get("seed", c.seed);
      f.get("lowercase", c.lowercase);
      KILN_CHECK(c.ngram >= 1 && c.bands >= 1 && c.rows >= 1, "curate config", where,
                 ": ngram, bands and rows must be >= 1");
      break;
    }
    case StepKind::pii: {
      auto& c = s.pii;
      f.get("email", c.email);
      f.get("ipv4", c.ipv4);
      f.get("ipv6", c.ipv6);
      f.get("phone", c.phone);
      f.get("email_placeholder", c.email_placeholder);
      f.get("ip_placeholder", c.ip_placeholder);
      f.get("phone_placeholder", c.phone_placeholder);
      break;
    }
  }
  f.finish();
}

}  // namespace

const char* to_string(StepKind k) {
  switch (k) {
    case StepKind::normalize:
      return "normalize";
    case StepKind::gopher_quality:
      return "gopher_quality";
    case StepKind::gopher_repetition:
      return "gopher_repetition";
    case StepKind::c4:
      return "c4";
    case StepKind::fineweb:
      return "fineweb";
    case StepKind::exact_dedup:
      return "exact_dedup";
    case StepKind::fuzzy_dedup:
      return "fuzzy_dedup";
    case StepKind::pii:
      return "pii";
  }
  return "?";
}

Step default_step(StepKind kind) {
  Step s;
  s.kind = kind;
  return s;
}

CurateConfig default_curate_config() {
  CurateConfig c;
  for (auto k : {StepKind::normalize, StepKind::exact_dedup, StepKind::gopher_repetition,
                 StepKind::gopher_quality, StepKind::c4, StepKind::fineweb, StepKind::fuzzy_dedup,
                 StepKind::pii})
    c.steps.push_back(default_step(k));
  return c;
}

CurateConfig parse_curate_config(const YAML::Node& root, const std::string& source) {
  CurateConfig c;
  ConfigSection top(root, "curate config", source);
  top.get("text_field", c.text_field);
  top.get("max_line_bytes", c.max_line_bytes);
  top.get("batch_docs", c.batch_docs);
  const YAML::Node steps = top.take("steps");
  top.finish();
  KILN_CHECK(c.batch_docs >= 1, "curate config", source, ": batch_docs must be >= 1, got ",
             c.batch_docs);
  KILN_CHECK(steps && steps.IsSequence(), "curate config", source,
             ": 'steps' must be a list, e.g. steps: [{normalize: {}}, {exact_dedup: {}}]");
  bool fuzzy = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    const YAML::Node& item = steps[i];
    std::string name;
    YAML::Node params;
    if (item.IsScalar()) {
      name = item.as<std::string>();
    } else {
      KILN_CHECK(item.IsMap() && item.size() == 1, "curate config", source, ": steps[", i,
                 "] must be a step name or a map with one key (the step name), e.g. ",
                 "'- gopher_quality: {min_doc_words: 50}'");
      name = item.begin()->first.as<std::string>();
      params = item.begin()->second;
    }
    Step s;
    bool known = false;
    std::string names;
    for (auto k : kAllKinds) {
      names += (names.empty() ? "" : ", ") + std::string(to_string(k));
      if (name == to_string(k)) s.kind = k, known = true;
    }
    KILN_CHECK(known, "curate config", source, ": steps[", i, "]: unknown step '", name,
               "'; known steps: ", names);
    if (s.kind == StepKind::fuzzy_dedup) {
      KILN_CHECK(!fuzzy, "curate config", source, ": fuzzy_dedup may appear once");
      fuzzy = true;
    }
    read_step(s, params, str(source, ": steps[", i, "] (", name, ")"));
    c.steps.push_back(std::move(s));
  }
  return c;
}

CurateConfig load_curate_config(const std::string& path) {
  KILN_CHECK(file_exists(path), "curate config", "'", path, "' does not exist: check the path ",
             "(configs/curate.yaml is a full example)");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    fail("curate config", "'", path, "' is not valid YAML: ", e.what());
  }
  return parse_curate_config(root, path);
}

CurateConfig config_from_step_list(const std::string& list) {
  return parse_curate_config(YAML::Load("steps: [" + list + "]"), "--steps");
}

}  // namespace kiln::curate

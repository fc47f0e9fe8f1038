#include "kiln/data/indexed_dataset_tokenize.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/indexed_dataset.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

bool is_text_file(const std::string& path) {
  auto ends = [&](std::string_view s) {
    return path.size() >= s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".txt") || ends(".txt.zst");
}

// One input line waiting to be parsed and encoded.
struct Pending {
  std::string line;
  int64_t number = 0;
  bool too_long = false;
  // Filled by the parallel pass:
  std::vector<int32_t> ids;
  bool bad = false, empty = false;
  JsonlIssue issue = JsonlIssue::invalid_json;
  std::string detail;
};

}  // namespace

TokenizeReport tokenize_to_indexed_dataset(const std::vector<std::string>& inputs,
                                           const Tokenizer& tok, const std::string& prefix,
                                           const TokenizeOptions& opts) {
  KILN_CHECK(!inputs.empty(), "data tokenize", "no input files: pass --input FILE...");
  std::optional<int32_t> eos = tok.eos_id();
  KILN_CHECK(!opts.append_eos || eos.has_value(), "data tokenize",
             "the tokenizer has no end-of-document token: train it with --special "
             "'<|endoftext|>' (or pass --no-eos to write documents back to back)");
  const std::string parent = std::filesystem::path(prefix).parent_path().string();
  if (!parent.empty()) make_dirs(parent);

  uint64_t total_bytes = 0;
  for (const auto& in : inputs) {
    KILN_CHECK(file_exists(in), "data tokenize", "input '", in, "' does not exist");
    total_bytes += std::filesystem::file_size(in);
  }

  TokenizeReport rep;
  IndexedDatasetWriter writer(prefix, token_dtype_for_vocab(tok.vocab_size()));
  Progress progress("tokenize", std::max<int64_t>(1, int64_t((total_bytes + 999999) / 1000000)),
                    "MB", 5.0);
  auto t0 = std::chrono::steady_clock::now();
  uint64_t bytes_before_file = 0;

  for (const auto& path : inputs) {
    LineReader reader(path);
    const bool text = is_text_file(path);
    std::vector<Pending> batch;
    bool any_line = false, done = false;
    while (!done) {
      // Gather a batch of lines (serial: memchr and a copy, GB/s).
      batch.clear();
      int64_t batch_bytes = 0;
      JsonlLine line;
      while (batch_bytes < opts.batch_bytes) {
        if (!reader.next(line)) {
          done = true;
          break;
        }
        any_line = true;
        Pending& p = batch.emplace_back();
        p.line.assign(line.text);
        p.number = line.number;
        p.too_long = line.too_long;
        batch_bytes += int64_t(line.bytes) + 1;
        rep.bytes += int64_t(line.bytes) + 1;
      }
      // Parse and encode, one document per task.
      parallel_for(int64_t(batch.size()), [&](int64_t i) {
        Pending& p = batch[size_t(i)];
        if (p.too_long) {
          p.bad = true;
          p.issue = JsonlIssue::line_too_long;
          p.detail = "line longer than the reader's cap";
          return;
        }
        std::string_view doc = p.line;
        std::string owned;
        if (!text) {
          nlohmann::ordered_json obj;
          if (!parse_jsonl_object(p.line, opts.text_field, obj, p.issue, p.detail)) {
            p.bad = true;
            return;
          }
          owned = std::move(obj[opts.text_field].get_ref<std::string&>());
          doc = owned;
        }
        if (doc.empty()) {
          p.empty = true;
          return;
        }
        try {  // nothing may escape an OpenMP region
          p.ids = tok.encode(doc);
        } catch (const std::exception& e) {
          p.bad = true;
          p.issue = JsonlIssue::invalid_utf8;
          p.detail = e.what();
          return;
        }
        if (opts.append_eos) p.ids.push_back(*eos);
      });
      // Write in input order.
      for (Pending& p : batch) {
        if (p.bad) {
          if (opts.strict)
            fail("data tokenize", to_string(p.issue), " in ", path, " line ", p.number, ": ",
                 p.detail, " (drop --strict to skip bad lines)");
          rep.errors.add(p.issue, path, p.number, std::move(p.detail));
        } else if (p.empty) {
          ++rep.empty;
        } else {
          writer.add_document(p.ids);
        }
      }
      if (opts.progress)
        progress.update(int64_t((bytes_before_file + reader.file_bytes_read()) / 1000000),
                        str(writer.num_documents(), " docs, ", writer.num_tokens(), " tokens"));
    }
    if (!any_line) {
      KILN_CHECK(!opts.strict, "data tokenize", "input '", path,
                 "' is empty (drop --strict to "
                 "skip empty files)");
      rep.errors.add(JsonlIssue::empty_file, path, 0, "no lines");
    }
    bytes_before_file += reader.file_size();
  }
  KILN_CHECK(writer.num_documents() > 0, "data tokenize", "no documents in ", inputs.size(),
             " input file(s) (", rep.errors.total(),
             " bad lines): nothing to write; check --text-field and the inputs");
  writer.finalize();
  if (opts.progress) progress.finish(str(writer.num_documents(), " docs"));
  rep.documents = writer.num_documents();
  rep.tokens = writer.num_tokens();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace kiln

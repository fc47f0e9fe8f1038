#include "kiln/data/curate.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <unordered_map>

#include "kiln/core/error.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/data/curate_text.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"

namespace kiln::curate {
namespace {

constexpr uint64_t kBatchBytes = 256ull << 20;  // raw input bytes per batch, with batch_docs

struct Doc {
  std::string raw;  // the input line, until parsed
  nlohmann::ordered_json obj;
  std::string text;
  uint32_t file = 0;
  int64_t line = 0;
  bool bad = false;  // bad input: never enters the steps
  JsonlIssue issue = JsonlIssue::invalid_json;
  std::string detail;
  int rejected_step = -1;  // the step that dropped it
  const char* reason = "";
  std::string duplicate_of;    // "file:line" for dedup rejections
  std::vector<int64_t> trace;  // text bytes after each step (per segment)
  PiiCounts pii;
  uint64_t hash = 0;
  std::vector<uint64_t> bands;
  std::string out;  // the rendered output or rejected line
  bool alive() const { return !bad && rejected_step < 0; }
};

uint64_t pack_origin(uint32_t file, int64_t line) {
  return (uint64_t(file) << 40) | uint64_t(line);
}

// A temp file removed when dropped: the fuzzy-dedup spool.
struct Spool {
  std::string path;
  std::FILE* f = nullptr;
  ~Spool() {
    if (f) std::fclose(f);
    if (!path.empty()) std::remove(path.c_str());
  }
  void write(const void* p, size_t n) {
    if (std::fwrite(p, 1, n, f) != n)
      fail("curate", "writing the dedup spool '", path, "' failed: the disk may be full");
  }
  void write_u64(uint64_t v) { write(&v, 8); }
  void read(void* p, size_t n) {
    if (std::fread(p, 1, n, f) != n) fail("curate", "reading the dedup spool '", path, "' failed");
  }
  uint64_t read_u64() {
    uint64_t v;
    read(&v, 8);
    return v;
  }
};

class Pipeline {
 public:
  explicit Pipeline(const CurateOptions& o) : opts_(o), cfg_(o.config) {
    const auto& steps = cfg_.steps;
    stats_.resize(steps.size());
    exact_seen_.resize(steps.size());
    for (size_t k = 0; k < steps.size(); ++k) {
      stats_[k].name = to_string(steps[k].kind);
      if (steps[k].kind == StepKind::fuzzy_dedup) {
        fuzzy_ = int(k);
        hasher_ = std::make_unique<MinHasher>(steps[k].fuzzy);
        lsh_ = std::make_unique<LshClusters>(steps[k].fuzzy.bands);
      }
    }
    report_.inputs = o.inputs;
  }

  CurateReport run() {
    auto t0 = std::chrono::steady_clock::now();
    for (auto& in : opts_.inputs)
      KILN_CHECK(file_exists(in), "curate", "input '", in, "' does not exist: check the path");
    std::filesystem::path out_dir = std::filesystem::path(opts_.output).parent_path();
    if (!out_dir.empty()) make_dirs(out_dir.string());
    out_ = std::make_unique<AtomicFile>(opts_.output);
    if (!opts_.rejected.empty()) rejected_ = std::make_unique<AtomicFile>(opts_.rejected);
    if (fuzzy_ >= 0) {
      spool_.path = opts_.output + ".spool.tmp";
      spool_.f = std::fopen(spool_.path.c_str(), "w+b");
      KILN_CHECK(spool_.f, "curate", "cannot create the dedup spool '", spool_.path,
                 "': check that the output directory is writable");
    }
    pass1();
    if (fuzzy_ >= 0) pass2();
    out_->commit();
    if (rejected_) rejected_->commit();
    report_.steps = stats_;
    report_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report_.threads = num_threads();
    std::string report_path =
        opts_.report.empty() ? default_report_path(opts_.output) : opts_.report;
    write_json_file_atomic(report_path, report_.to_json());
    return std::move(report_);
  }

 private:
  // Reads every input, batch by batch, and runs the steps before fuzzy dedup (or all of them).
  void pass1() {
    uint64_t total_bytes = 0;
    for (auto& in : opts_.inputs) total_bytes += std::filesystem::file_size(in);
    uint64_t done_files = 0;
    Progress progress("curate", int64_t(total_bytes >> 20), "MiB");
    std::vector<Doc> batch;
    uint64_t batch_bytes = 0;
    size_t end = fuzzy_ >= 0 ? size_t(fuzzy_) : cfg_.steps.size();
    auto flush = [&] {
      parse(batch);
      run_steps(batch, 0, end);
      if (fuzzy_ >= 0)
        spool(batch);
      else
        emit(batch);
      batch.clear();
      batch_bytes = 0;
    };
    for (uint32_t fi = 0; fi < opts_.inputs.size(); ++fi) {
      LineReader reader(opts_.inputs[fi], cfg_.max_line_bytes);
      JsonlLine line;
      bool any = false;
      while (reader.next(line)) {
        any = true;
        ++report_.docs_read;
        report_.bytes_read += int64_t(line.bytes);
        if (line.too_long) {
          if (opts_.strict) flush();  // earlier bad lines are reported first
          bad_input(JsonlIssue::line_too_long, fi, line.number,
                    str(line.bytes, " bytes, over the limit of ", cfg_.max_line_bytes,
                        " (max_line_bytes in the config)"));
          continue;
        }
        if (strip(line.text).empty()) {  // blank lines separate nothing in JSONL: skip quietly
          --report_.docs_read;
          continue;
        }
        Doc& d = batch.emplace_back();
        d.raw.assign(line.text);
        d.file = fi;
        d.line = line.number;
        batch_bytes += line.bytes;
        if (batch.size() >= size_t(cfg_.batch_docs) || batch_bytes >= kBatchBytes) {
          flush();
          if (opts_.progress)
            progress.update(int64_t((done_files + reader.file_bytes_read()) >> 20));
        }
      }
      if (!any && opts_.strict) flush();
      if (!any) bad_input(JsonlIssue::empty_file, fi, 0, "the file has no lines");
      done_files += reader.file_size();
    }
    flush();
    if (opts_.progress) progress.finish();
  }

  void bad_input(JsonlIssue issue, uint32_t file, int64_t line, std::string detail) {
    report_.errors.add(issue, opts_.inputs[file], line, std::move(detail));
    if (opts_.strict)
      fail("curate", JsonlErrors::describe(report_.errors.examples().back()),
           " (--strict stops at the first bad input; drop --strict to skip and count bad lines)");
  }

  void parse(std::vector<Doc>& batch) {
    const std::string& field = cfg_.text_field;
    parallel_for(int64_t(batch.size()), [&](int64_t i) {
      Doc& d = batch[size_t(i)];
      if (parse_jsonl_object(d.raw, field, d.obj, d.issue, d.detail)) {
        auto& t = d.obj[field].get_ref<std::string&>();
        d.text = std::move(t);
        t.clear();  // the field keeps its place in the object; the text lives in d.text
      } else {
        d.bad = true;
      }
      d.raw = std::string();
    });
    for (auto& d : batch)
      if (d.bad) bad_input(d.issue, d.file, d.line, d.detail);
  }

  // Runs steps [from, to): runs of per-document steps in one parallel sweep, dedup steps with a
  // parallel hash and a serial lookup in input order.
  void run_steps(std::vector<Doc>& batch, size_t from, size_t to) {
    size_t k = from;
    while (k < to) {
      const Step& step = cfg_.steps[k];
      if (step.kind == StepKind::exact_dedup) {
        exact_dedup(batch, k);
        ++k;
        continue;
      }
      size_t k2 = k;
      while (k2 < to && cfg_.steps[k2].per_document()) ++k2;
      std::vector<int64_t> bytes_in(batch.size());
      std::vector<char> entered(batch.size());
      for (size_t i = 0; i < batch.size(); ++i) {
        entered[i] = batch[i].alive();
        bytes_in[i] = int64_t(batch[i].text.size());
      }
      parallel_for(int64_t(batch.size()), [&](int64_t i) {
        Doc& d = batch[size_t(i)];
        if (!d.alive()) return;
        d.trace.assign(cfg_.steps.size(), 0);
        thread_local WordCache words;
        words.invalidate();
        for (size_t j = k; j < k2 && d.alive(); ++j) {
          apply(d, cfg_.steps[j], j, words);
          d.trace[j] = int64_t(d.text.size());
        }
        // Fuzzy dedup next: its signature reads the words this sweep has split already.
        if (k2 == to && int(to) == fuzzy_ && d.alive()) band(d, &words.of(d.text));
      });
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!entered[i]) continue;
        Doc& d = batch[i];
        int64_t bytes = bytes_in[i];
        for (size_t j = k; j < k2; ++j) {
          auto& s = stats_[j];
          ++s.docs_in, s.bytes_in += bytes;
          if (d.rejected_step == int(j)) {
            ++s.reasons[d.reason];
            break;
          }
          bytes = d.trace[j];
          ++s.docs_out, s.bytes_out += bytes;
        }
        report_.pii += d.pii;
        d.pii = {};
      }
      k = k2;
    }
  }

  // One step on one document; `words` holds the split of d.text for the filters that share it.
  void apply(Doc& d, const Step& s, size_t index, WordCache& words) {
    FilterResult r;
    switch (s.kind) {
      case StepKind::normalize:
        d.text = normalize_text(d.text, s.normalize);
        words.invalidate();
        break;
      case StepKind::gopher_quality:
        r = gopher_quality(d.text, s.gopher_quality, &words.of(d.text));
        break;
      case StepKind::gopher_repetition:
        r = gopher_repetition(d.text, s.gopher_repetition, &words.of(d.text));
        break;
      case StepKind::c4:
        r = c4_quality(d.text, s.c4);
        if (r.rewrote) words.invalidate();
        break;
      case StepKind::fineweb:
        r = fineweb_quality(d.text, s.fineweb, &words.of(d.text));
        break;
      case StepKind::pii:
        d.text = redact_pii(d.text, s.pii, d.pii);
        words.invalidate();
        break;
      case StepKind::exact_dedup:
      case StepKind::fuzzy_dedup:
        break;
    }
    if (!r.keep) d.rejected_step = int(index), d.reason = r.reason;
  }

  std::string origin_name(uint64_t origin) const {
    return str(opts_.inputs[size_t(origin >> 40)], ":", origin & ((1ull << 40) - 1));
  }

  void exact_dedup(std::vector<Doc>& batch, size_t k) {
    parallel_for(int64_t(batch.size()), [&](int64_t i) {
      Doc& d = batch[size_t(i)];
      if (d.alive()) d.hash = hash64(d.text);
    });
    auto& seen = exact_seen_[k];
    auto& s = stats_[k];
    constexpr uint64_t kSeenTwice = 1ull << 63;
    for (auto& d : batch) {
      if (!d.alive()) continue;
      ++s.docs_in, s.bytes_in += int64_t(d.text.size());
      auto [it, inserted] = seen.try_emplace(d.hash, pack_origin(d.file, d.line));
      if (inserted) {
        ++s.docs_out, s.bytes_out += int64_t(d.text.size());
        continue;
      }
      if (!(it->second & kSeenTwice)) ++s.clusters, it->second |= kSeenTwice;
      d.rejected_step = int(k), d.reason = "exact_duplicate";
      d.duplicate_of = origin_name(it->second & ~kSeenTwice);
      ++s.reasons[d.reason];
    }
  }

  // d's MinHash band hashes, from its words when given.
  void band(Doc& d, const Words* words) const {
    thread_local std::vector<uint32_t> sig;
    sig.resize(size_t(hasher_->num_hashes()));
    if (words)
      hasher_->signature(*words, sig.data());
    else
      hasher_->signature(d.text, sig.data());
    d.bands.resize(size_t(hasher_->config().bands));
    hasher_->band_hashes(sig.data(), d.bands.data());
  }

  // Fuzzy dedup, first half: signatures into the LSH index; the surviving documents to the spool.
  void spool(std::vector<Doc>& batch) {
    parallel_for(int64_t(batch.size()), [&](int64_t i) {
      Doc& d = batch[size_t(i)];
      if (!d.alive()) return;
      if (d.bands.empty()) band(d, nullptr);
      d.out = d.obj.dump();
    });
    write_rejected(batch);
    for (auto& d : batch) {
      if (!d.alive()) {
        report_.docs_rejected += !d.bad;
        continue;
      }
      lsh_->add(d.bands.data());
      origins_.push_back(pack_origin(d.file, d.line));
      spool_.write_u64(pack_origin(d.file, d.line));
      spool_.write_u64(d.out.size());
      spool_.write(d.out.data(), d.out.size());
      spool_.write_u64(d.text.size());
      spool_.write(d.text.data(), d.text.size());
    }
  }

  // Fuzzy dedup, second half: drop all but the first document of each cluster, run the rest.
  void pass2() {
    lsh_->finish();
    auto& s = stats_[size_t(fuzzy_)];
    s.clusters = lsh_->clusters();
    std::fflush(spool_.f);
    std::rewind(spool_.f);
    uint32_t n = lsh_->size();
    std::vector<Doc> batch;
    for (uint32_t id = 0; id < n;) {
      batch.clear();
      uint32_t first = id;
      for (; id < n && batch.size() < size_t(cfg_.batch_docs); ++id) {
        Doc& d = batch.emplace_back();
        uint64_t origin = spool_.read_u64();
        d.file = uint32_t(origin >> 40), d.line = int64_t(origin & ((1ull << 40) - 1));
        d.raw.resize(spool_.read_u64());
        spool_.read(d.raw.data(), d.raw.size());
        d.text.resize(spool_.read_u64());
        spool_.read(d.text.data(), d.text.size());
      }
      parallel_for(int64_t(batch.size()), [&](int64_t i) {
        Doc& d = batch[size_t(i)];
        d.obj = nlohmann::ordered_json::parse(d.raw);
        d.raw = std::string();
      });
      for (uint32_t i = 0; i < batch.size(); ++i) {
        Doc& d = batch[i];
        ++s.docs_in, s.bytes_in += int64_t(d.text.size());
        uint32_t doc = first + i;
        if (lsh_->kept(doc)) {
          ++s.docs_out, s.bytes_out += int64_t(d.text.size());
          continue;
        }
        d.rejected_step = fuzzy_, d.reason = "near_duplicate";
        d.duplicate_of = origin_name(origins_[lsh_->root(doc)]);
        ++s.reasons[d.reason];
      }
      run_steps(batch, size_t(fuzzy_) + 1, cfg_.steps.size());
      emit(batch);
    }
  }

  void write_rejected(std::vector<Doc>& batch) {
    if (!rejected_) return;
    parallel_for(int64_t(batch.size()), [&](int64_t i) {
      Doc& d = batch[size_t(i)];
      if (d.bad || d.rejected_step < 0) return;
      d.obj[cfg_.text_field] = d.text;
      d.obj["step"] = stats_[size_t(d.rejected_step)].name;
      d.obj["reason"] = d.reason;
      if (!d.duplicate_of.empty()) d.obj["duplicate_of"] = d.duplicate_of;
      d.out = d.obj.dump() + "\n";
    });
    for (auto& d : batch) {
      if (d.bad || d.rejected_step < 0) continue;
      rejected_->write(d.out);
      d.out.clear();
    }
  }

  // Writes the batch: kept documents to the output, rejected ones to the rejected file.
  void emit(std::vector<Doc>& batch) {
    write_rejected(batch);
    parallel_for(int64_t(batch.size()), [&](int64_t i) {
      Doc& d = batch[size_t(i)];
      if (!d.alive()) return;
      d.out = dump_jsonl_with_text(d.obj, cfg_.text_field, d.text);
    });
    for (auto& d : batch) {
      if (d.bad) continue;
      if (d.rejected_step >= 0) {
        ++report_.docs_rejected;
        continue;
      }
      out_->write(d.out);
      ++report_.docs_written;
      report_.bytes_written += int64_t(d.out.size());
    }
  }

  const CurateOptions& opts_;
  const CurateConfig& cfg_;
  CurateReport report_;
  std::vector<StepStats> stats_;
  std::vector<std::unordered_map<uint64_t, uint64_t>>
      exact_seen_;  // per exact step: hash -> origin
  int fuzzy_ = -1;
  std::unique_ptr<MinHasher> hasher_;
  std::unique_ptr<LshClusters> lsh_;
  std::vector<uint64_t> origins_;  // per LSH document: where it came from
  std::unique_ptr<AtomicFile> out_, rejected_;
  Spool spool_;
};

std::string fmt_mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", double(bytes) / 1e6);
  return buf;
}

}  // namespace

std::string default_report_path(const std::string& output) {
  std::string base = output;
  for (const char* ext : {".zst", ".jsonl", ".json"})
    if (base.size() > std::strlen(ext) &&
        base.compare(base.size() - std::strlen(ext), std::string::npos, ext) == 0)
      base.resize(base.size() - std::strlen(ext));
  return base + ".report.json";
}

nlohmann::json CurateReport::to_json() const {
  nlohmann::json j;
  j["inputs"] = inputs;
  j["docs_read"] = docs_read, j["bytes_read"] = bytes_read;
  j["docs_written"] = docs_written, j["bytes_written"] = bytes_written;
  j["docs_rejected"] = docs_rejected;
  j["seconds"] = seconds, j["threads"] = threads;
  j["mb_per_s"] = seconds > 0 ? double(bytes_read) / 1e6 / seconds : 0.0;
  j["steps"] = nlohmann::json::array();
  for (auto& s : steps)
    j["steps"].push_back({{"step", s.name},
                          {"docs_in", s.docs_in},
                          {"docs_out", s.docs_out},
                          {"bytes_in", s.bytes_in},
                          {"bytes_out", s.bytes_out},
                          {"reasons", s.reasons},
                          {"clusters", s.clusters}});
  j["pii"] = {{"email", pii.email}, {"ipv4", pii.ipv4}, {"ipv6", pii.ipv6}, {"phone", pii.phone}};
  j["bad_input"] = errors.to_json();
  return j;
}

std::string CurateReport::table() const {
  std::string t;
  char line[256];
  std::snprintf(line, sizeof line, "%-18s %10s %10s %10s %10s %8s  %s\n", "step", "docs in",
                "docs out", "MB in", "MB out", "clusters", "rejected by reason");
  t += line;
  for (auto& s : steps) {
    std::string reasons;
    for (auto& [r, n] : s.reasons)
      reasons += (reasons.empty() ? "" : ", ") + r + " " + std::to_string(n);
    std::snprintf(line, sizeof line, "%-18s %10lld %10lld %10s %10s %8lld  ", s.name.c_str(),
                  (long long)s.docs_in, (long long)s.docs_out, fmt_mb(s.bytes_in).c_str(),
                  fmt_mb(s.bytes_out).c_str(), (long long)s.clusters);
    t += line + reasons + "\n";
  }
  t += str("read ", docs_read, " lines (", fmt_mb(bytes_read), " MB), wrote ", docs_written, " (",
           fmt_mb(bytes_written), " MB), rejected ", docs_rejected, ", bad input ", errors.total(),
           "\n");
  t += str("pii redacted: email ", pii.email, ", ipv4 ", pii.ipv4, ", ipv6 ", pii.ipv6, ", phone ",
           pii.phone, "\n");
  for (auto& e : errors.examples()) t += "  bad input: " + JsonlErrors::describe(e) + "\n";
  if (errors.total() > int64_t(errors.examples().size()))
    t += str("  ... and ", errors.total() - int64_t(errors.examples().size()),
             " more (see the report)\n");
  char rate[96];
  std::snprintf(rate, sizeof rate, "%.2f s, %.1f MB/s on %d threads (%.1f MB/s per thread)\n",
                seconds, seconds > 0 ? double(bytes_read) / 1e6 / seconds : 0.0, threads,
                seconds > 0 ? double(bytes_read) / 1e6 / seconds / threads : 0.0);
  return t + rate;
}

CurateReport run_curate(const CurateOptions& opts) {
  KILN_CHECK(!opts.inputs.empty(), "curate", "no input files: pass --input FILE...");
  KILN_CHECK(!opts.output.empty(), "curate", "no output file: pass --output clean.jsonl");
  for (auto& in : opts.inputs)
    KILN_CHECK(std::filesystem::absolute(in) != std::filesystem::absolute(opts.output), "curate",
               "the output '", opts.output, "' is also an input: choose another output path");
  Pipeline p(opts);
  return p.run();
}

}  // namespace kiln::curate

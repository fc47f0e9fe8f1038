// Streaming JSONL input: a line reader over plain or zstd-compressed files (".zst") that numbers
// lines and caps their length, and a collector for the bad lines it meets (invalid JSON, a missing
// field, invalid UTF-8, a line too long) that counts them and remembers where they were.
// Cost: one buffered pass over the file; memory is the buffer plus the longest accepted line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln {

// One line of a file, without its "\n" (and a "\r" before it).
struct JsonlLine {
  std::string_view text;  // valid until the next call to next(); empty when too_long
  int64_t number = 0;     // 1-based line number in the file
  uint64_t bytes = 0;     // the line's full length, even when too_long
  bool too_long = false;  // longer than max_line_bytes: its bytes were skipped, not kept
};

class LineReader {
 public:
  // Opens `path` (zstd-decompressed when it ends in ".zst"). Lines longer than max_line_bytes are
  // reported as too_long and skipped without being held in memory.
  explicit LineReader(const std::string& path, uint64_t max_line_bytes = 64ull << 20);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line; false at the end of the file. A final line without "\n" is still a line.
  // Throws kiln::Error on a read error or a corrupt .zst stream (naming the file).
  bool next(JsonlLine& line);

  const std::string& path() const { return path_; }
  // Bytes consumed from the file on disk so far (compressed bytes for .zst): for progress lines.
  uint64_t file_bytes_read() const { return file_bytes_read_; }
  uint64_t file_size() const { return file_size_; }

 private:
  bool fill();  // appends decoded bytes to buf_; false at end of input
  std::string path_;
  std::FILE* f_ = nullptr;
  struct Zstd;
  std::unique_ptr<Zstd> zstd_;
  std::string buf_;  // decoded bytes not yet returned, from pos_
  size_t pos_ = 0;
  uint64_t max_line_bytes_, file_bytes_read_ = 0, file_size_ = 0;
  int64_t line_no_ = 0;
  bool eof_ = false;
};

// The kinds of bad input a JSONL reader skips (or fails on, in strict mode).
enum class JsonlIssue {
  invalid_json,
  not_an_object,
  missing_field,
  field_not_string,
  invalid_utf8,
  line_too_long,
  empty_file
};
const char* to_string(JsonlIssue issue);

// Counts bad lines by kind and keeps the first `max_examples` with file and line number.
class JsonlErrors {
 public:
  struct Example {
    JsonlIssue issue;
    std::string file;
    int64_t line;  // 0 for a whole-file issue (empty_file)
    std::string detail;
  };
  explicit JsonlErrors(size_t max_examples = 100) : max_examples_(max_examples) {}
  void add(JsonlIssue issue, const std::string& file, int64_t line, std::string detail);
  int64_t total() const { return total_; }
  const std::map<JsonlIssue, int64_t>& counts() const { return counts_; }
  const std::vector<Example>& examples() const { return examples_; }
  // "invalid_json in a.jsonl line 3: <detail>"
  static std::string describe(const Example& e);
  nlohmann::json to_json() const;

 private:
  size_t max_examples_;
  int64_t total_ = 0;
  std::map<JsonlIssue, int64_t> counts_;
  std::vector<Example> examples_;
};

// Parses one JSONL line that must be an object with a string field `field` (nlohmann's parser
// rejects ill-formed UTF-8 inside strings). On success returns true and fills `obj` (key order
// kept). On failure returns false and sets `issue` and a one-line `detail`.
bool parse_jsonl_object(std::string_view line, const std::string& field,
                        nlohmann::ordered_json& obj, JsonlIssue& issue, std::string& detail);

// `obj` as one JSONL line (nlohmann's compact dump(), byte for byte, plus "\n") with `text` as the
// value of its key `field`, which must exist: the long text is escaped straight into the output
// instead of being copied into the object and serialized character by character. `text` must be
// valid UTF-8.
std::string dump_jsonl_with_text(const nlohmann::ordered_json& obj, const std::string& field,
                                 std::string_view text);

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool valid_utf8(std::string_view s);

}  // namespace kiln

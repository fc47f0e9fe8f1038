#include "kiln/data/jsonl.h"

#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/io/json_file.h"

namespace kiln {
namespace {

constexpr size_t kChunk = 1 << 20;  // bytes read from the file per fill

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

struct LineReader::Zstd {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  std::string in;
  ZSTD_inBuffer input{nullptr, 0, 0};
  size_t last_ret = 0;  // 0 when the last frame ended cleanly
  ~Zstd() { ZSTD_freeDCtx(ctx); }
};

LineReader::LineReader(const std::string& path, uint64_t max_line_bytes)
    : path_(path), max_line_bytes_(max_line_bytes) {
  f_ = std::fopen(path.c_str(), "rb");
  if (!f_) fail("jsonl", "cannot open '", path, "': ", std::strerror(errno), ": check the path");
  if (std::fseek(f_, 0, SEEK_END) == 0) {
    long n = std::ftell(f_);
    file_size_ = n > 0 ? uint64_t(n) : 0;
    std::fseek(f_, 0, SEEK_SET);
  }
  if (ends_with(path, ".zst")) zstd_ = std::make_unique<Zstd>();
}

LineReader::~LineReader() {
  if (f_) std::fclose(f_);
}

bool LineReader::fill() {
  if (eof_) return false;
  if (!zstd_) {
    size_t old = buf_.size();
    buf_.resize(old + kChunk);
    size_t n = std::fread(buf_.data() + old, 1, kChunk, f_);
    buf_.resize(old + n);
    file_bytes_read_ += n;
    if (n == 0) {
      if (std::ferror(f_)) fail("jsonl", "reading '", path_, "' failed: ", std::strerror(errno));
      eof_ = true;
      return false;
    }
    return true;
  }
  Zstd& z = *zstd_;
  while (true) {
    if (z.input.pos == z.input.size) {
      z.in.resize(ZSTD_DStreamInSize());
      size_t n = std::fread(z.in.data(), 1, z.in.size(), f_);
      file_bytes_read_ += n;
      if (n == 0) {
        if (std::ferror(f_)) fail("jsonl", "reading '", path_, "' failed: ", std::strerror(errno));
        KILN_CHECK(z.last_ret == 0, "jsonl", "'", path_,
                   "' ends in the middle of a zstd frame: the file is truncated; ",
                   "re-compress it");
        eof_ = true;
        return false;
      }
      z.input = {z.in.data(), n, 0};
    }
    size_t old = buf_.size();
    buf_.resize(old + ZSTD_DStreamOutSize());
    ZSTD_outBuffer out{buf_.data() + old, ZSTD_DStreamOutSize(), 0};
    size_t ret = ZSTD_decompressStream(z.ctx, &out, &z.input);
    buf_.resize(old + out.pos);
    KILN_CHECK(!ZSTD_isError(ret), "jsonl", "'", path_, "' is not a valid zstd stream (",
               ZSTD_getErrorName(ret), "): check that the file is zstd-compressed and intact");
    z.last_ret = ret;
    if (out.pos > 0) return true;
  }
}

bool LineReader::next(JsonlLine& line) {
  // Drop what the previous call returned, keeping the buffer small.
  if (pos_ > 0 && pos_ >= buf_.size() / 2) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  size_t scan = pos_;    // bytes before `scan` hold no '\n'
  uint64_t skipped = 0;  // bytes of a too-long line already thrown away
  while (true) {
    const char* nl =
        static_cast<const char*>(std::memchr(buf_.data() + scan, '\n', buf_.size() - scan));
    if (nl || (eof_ && pos_ < buf_.size()) || (eof_ && skipped > 0)) {
      size_t end = nl ? size_t(nl - buf_.data()) : buf_.size();
      line.number = ++line_no_;
      line.bytes = skipped + (end - pos_);
      line.too_long = line.bytes > max_line_bytes_;
      size_t text_end = end;
      if (!line.too_long && text_end > pos_ && buf_[text_end - 1] == '\r') --text_end;
      line.text = line.too_long ? std::string_view()
                                : std::string_view(buf_.data() + pos_, text_end - pos_);
      pos_ = nl ? end + 1 : end;
      return true;
    }
    if (eof_) return false;
    // No newline yet: a line longer than the cap is dropped as it streams in.
    if (skipped + (buf_.size() - pos_) > max_line_bytes_) {
      skipped += buf_.size() - pos_;
      buf_.clear();
      pos_ = 0;
    } else if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    scan = buf_.size();
    fill();
  }
}

const char* to_string(JsonlIssue issue) {
  switch (issue) {
    case JsonlIssue::invalid_json:
      return "invalid_json";
    case JsonlIssue::not_an_object:
      return "not_an_object";
    case JsonlIssue::missing_field:
      return "missing_field";
    case JsonlIssue::field_not_string:
      return "field_not_string";
    case JsonlIssue::invalid_utf8:
      return "invalid_utf8";
    case JsonlIssue::line_too_long:
      return "line_too_long";
    case JsonlIssue::empty_file:
      return "empty_file";
  }
  return "?";
}

void JsonlErrors::add(JsonlIssue issue, const std::string& file, int64_t line, std::string detail) {
  ++total_;
  ++counts_[issue];
  // Parser messages quote the offending bytes; keep the report valid UTF-8.
  if (!valid_utf8(detail))
    for (char& c : detail)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
  if (examples_.size() < max_examples_) examples_.push_back({issue, file, line, std::move(detail)});
}

std::string JsonlErrors::describe(const Example& e) {
  std::string where = e.line > 0 ? str(e.file, " line ", e.line) : e.file;
  return str(to_string(e.issue), " in ", where, e.detail.empty() ? "" : ": ", e.detail);
}

nlohmann::json JsonlErrors::to_json() const {
  nlohmann::json j;
  j["total"] = total_;
  j["counts"] = nlohmann::json::object();
  for (auto& [k, v] : counts_) j["counts"][to_string(k)] = v;
  j["examples"] = nlohmann::json::array();
  for (auto& e : examples_)
    j["examples"].push_back(
        {{"issue", to_string(e.issue)}, {"file", e.file}, {"line", e.line}, {"detail", e.detail}});
  return j;
}

bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0)
      len = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0)
      len = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0)
      len = 4, cp = c & 0x07, min = 0x10000;
    else
      return false;
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

bool parse_jsonl_object(std::string_view line, const std::string& field,
                        nlohmann::ordered_json& obj, JsonlIssue& issue, std::string& detail) {
  // Before parsing: dump() recurses once per level, so a deep line would overflow the stack.
  if (json_nesting_depth(line) > limits::kMaxJsonDepth) {
    issue = JsonlIssue::invalid_json;
    detail = str("nesting depth is over kiln's limit of ", limits::kMaxJsonDepth,
                 " levels of arrays/objects (core/limits.h)");
    return false;
  }
  try {
    obj = nlohmann::ordered_json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    std::string reason = json_error_reason(e);
    bool utf8 = reason.find("UTF-8") != std::string::npos || !valid_utf8(line);
    issue = utf8 ? JsonlIssue::invalid_utf8 : JsonlIssue::invalid_json;
    detail = str("byte ", e.byte, ": ", reason);
    return false;
  }
  if (!obj.is_object()) {
    issue = JsonlIssue::not_an_object;
    detail = str("expected a JSON object, got ", obj.type_name());
    return false;
  }
  auto it = obj.find(field);
  if (it == obj.end()) {
    issue = JsonlIssue::missing_field;
    detail = str("no field '", field, "' (use --text-field to name the text field)");
    return false;
  }
  if (!it->is_string()) {
    issue = JsonlIssue::field_not_string;
    detail = str("field '", field, "' is a ", it->type_name(), ", expected a string");
    return false;
  }
  return true;
}

namespace {

// A JSON string literal as nlohmann's serializer writes it without ensure_ascii: the short
// escapes, \u00xx (lower-case hex) for other control characters, everything else verbatim.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  size_t run = 0;  // start of the pending run of bytes that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
        out += buf;
      }
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

}  // namespace

std::string dump_jsonl_with_text(const nlohmann::ordered_json& obj, const std::string& field,
                                 std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 16 + 64);
  out += '{';
  bool first = true;
  for (const auto& [key, value] : obj.items()) {
    if (!first) out += ',';
    first = false;
    append_json_string(out, key);
    out += ':';
    if (key == field)
      append_json_string(out, text);
    else
      out += value.dump();
  }
  out += "}\n";
  return out;
}

}  // namespace kiln

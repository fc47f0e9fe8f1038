#include "kiln/io/json_file.h"

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/io/file.h"

namespace kiln {

std::string text_position(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1 + size_t(std::count(text.begin(), text.begin() + offset, '\n'));
  size_t line_start = 0;
  if (offset > 0) {
    size_t nl = text.rfind('\n', offset - 1);
    if (nl != std::string_view::npos) line_start = nl + 1;
  }
  return str("line ", line, ", column ", offset - line_start + 1);
}

int json_nesting_depth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size() && deepest <= limits::kMaxJsonDepth; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // skip the escaped character, which may be a quote
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

void check_json_depth(const char* op, std::string_view file, std::string_view text) {
  KILN_CHECK(json_nesting_depth(text) <= limits::kMaxJsonDepth, op, file,
             ": JSON nesting depth is over kiln's limit of ", limits::kMaxJsonDepth,
             " levels of arrays/objects (core/limits.h): the file is corrupt or crafted");
}

std::string json_error_reason(const std::exception& e) {
  std::string_view msg = e.what();
  if (msg.starts_with("[json.exception.")) {
    size_t close = msg.find("] ");
    if (close != std::string_view::npos) msg.remove_prefix(close + 2);
  }
  if (msg.starts_with("parse error")) {
    size_t colon = msg.find(": ");
    if (colon != std::string_view::npos) msg.remove_prefix(colon + 2);
  }
  return std::string(msg);
}

nlohmann::json read_json_file(const std::string& path) {
  std::string text = read_file(path);
  check_json_depth("json", str("'", path, "'"), text);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
      fail("json", "'", path, "' is empty; it should hold a JSON value (e.g. {}): rewrite it");
    }
    // e.byte is 1-based and points at the last character read, i.e. the offending one.
    size_t at = e.byte > 0 ? size_t(e.byte - 1) : 0;
    fail("json", "'", path, "' is not valid JSON at ", text_position(text, at), ": ",
         json_error_reason(e),
         "; fix the file there (a trailing comma, a missing quote or comma, or a comment is the "
         "usual cause)");
  }
}

void write_json_file_atomic(const std::string& path, const nlohmann::json& j, int indent) {
  std::string text;
  try {
    text = j.dump(indent);
  } catch (const nlohmann::json::type_error& e) {
    fail("json", "cannot write '", path, "': ", json_error_reason(e),
         "; make every string valid UTF-8 (decode bytes before putting them in JSON)");
  }
  text += '\n';
  write_file_atomic(path, text);
}

}  // namespace kiln

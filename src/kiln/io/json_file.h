// JSON files (configs, tokenizer.json, checkpoints' metadata) through nlohmann::json. Parse errors
// name the file, the line and column, and what to fix.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kiln {

// Parses the whole file. Strict JSON: no comments, no trailing commas. Nesting deeper than
// limits::kMaxJsonDepth is an error (check_json_depth).
nlohmann::json read_json_file(const std::string& path);

// Writes `j` (pretty-printed with `indent` spaces, or compact if indent < 0) plus a final newline
// through write_file_atomic, so a crash never leaves a half-written file.
void write_json_file_atomic(const std::string& path, const nlohmann::json& j, int indent = 2);

// How deeply `text` nests arrays and objects (brackets inside strings skipped), counting no further
// than limits::kMaxJsonDepth + 1. One pass, no allocation: run it before parsing untrusted text,
// because nlohmann's dump() and kiln's own walkers recurse once per level (a line of 100,000 '['
// would overflow the stack).
int json_nesting_depth(std::string_view text);

// Throws "[op] <file>: JSON nesting depth is over kiln's limit of 128 levels ..." when `text`
// nests deeper than limits::kMaxJsonDepth.
void check_json_depth(const char* op, std::string_view file, std::string_view text);

// "line 3, column 14" for the character at 0-based `offset` of `text` (offset clamped to the text).
std::string text_position(std::string_view text, size_t offset);

// The human part of a nlohmann exception message: drops "[json.exception.x.y] " and nlohmann's own
// position prefix ("parse error at line 1, column 2: "), which callers replace with their own.
std::string json_error_reason(const std::exception& e);

}  // namespace kiln

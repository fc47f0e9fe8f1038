// JSON files (configs, tokenizer.json, checkpoints' metadata) through nlohmann::json. Parse errors
// name the file, the line and column, and what to fix.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kiln {

// Parses the whole file. Strict JSON: no comments, no trailing commas.
nlohmann::json read_json_file(const std::string& path);

// Writes `j` (pretty-printed with `indent` spaces, or compact if indent < 0) plus a final newline
// through write_file_atomic, so a crash never leaves a half-written file.
void write_json_file_atomic(const std::string& path, const nlohmann::json& j, int indent = 2);

// "line 3, column 14" for the character at 0-based `offset` of `text` (offset clamped to the text).
std::string text_position(std::string_view text, size_t offset);

// The human part of a nlohmann exception message: drops "[json.exception.x.y] " and nlohmann's own
// position prefix ("parse error at line 1, column 2: "), which callers replace with their own.
std::string json_error_reason(const std::exception& e);

}  // namespace kiln

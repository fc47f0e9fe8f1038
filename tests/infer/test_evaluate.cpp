// evaluate_text (kiln eval --text) and evaluate_replies (kiln eval --sft).
#include "kiln/infer/evaluate.h"

#include <gtest/gtest.h>

#include <cmath>

#include "infer/infer_test_util.h"

namespace kiln {
namespace {

TEST(Evaluate, WordEditDistanceCountsInsertionsDeletionsSubstitutions) {
  auto d = [](const char* a, const char* b) {
    return word_edit_distance(split_words(a), split_words(b));
  };
  EXPECT_EQ(d("G AE1 DH ER0", "G AE1 DH ER0"), 0);
  EXPECT_EQ(d("G AE1 DH ER0", "G AE1 D ER0"), 1);         // one substitution
  EXPECT_EQ(d("G AE1 DH ER0", "G DH ER0"), 1);            // one deletion
  EXPECT_EQ(d("G AE1 DH ER0", "G AE1 AE1 DH ER0 Z"), 2);  // two insertions
  EXPECT_EQ(d("", "A B"), 2);
  EXPECT_EQ(d("A B C", ""), 3);
  EXPECT_EQ(split_words("  a \n b\tc  "), (std::vector<std::string>{"a", "b", "c"}));
}

TEST(Evaluate, RepliesAreScoredAgainstWhatGreedyDecodingSays) {
  const Tokenizer tok = Tokenizer::byte_level({});
  ModelConfig c = test::tiny_llama(256);
  auto model = test::make_model(c, 5);
  // The references: each prompt's greedy reply, decoded alone.
  const std::vector<std::string> prompts = {"ab", "hello", "x y z", "q"};
  std::vector<std::pair<std::string, std::string>> items;
  SamplingParams greedy;
  greedy.temperature = 0;
  for (const std::string& p : prompts) {
    Engine alone(*model, {}, &tok);
    alone.add_request(tok.encode(p), greedy, test::stop_after(6));
    items.emplace_back(p, alone.run_all()[0].samples[0].text);
  }
  Engine eng(*model, {}, &tok);
  ReplyEval all = evaluate_replies(eng, tok, items, test::stop_after(6));
  EXPECT_EQ(all.examples, 4);
  EXPECT_EQ(all.exact, 4);  // batched replies equal the ones decoded alone
  EXPECT_EQ(all.errors, 0);
  EXPECT_TRUE(all.misses.empty());
  // A reference with one word changed and one word added: not exact, two word errors.
  items[1].second = "WRONG " + items[1].second + " EXTRA";
  Engine eng2(*model, {}, &tok);
  ReplyEval one = evaluate_replies(eng2, tok, items, test::stop_after(6));
  EXPECT_EQ(one.exact, 3);
  EXPECT_NEAR(one.exact_match(), 0.75, 1e-12);
  EXPECT_EQ(one.errors, 2);
  ASSERT_EQ(one.misses.size(), 1u);
  EXPECT_EQ(one.misses[0].first, items[1].second);
}

}  // namespace
}  // namespace kiln

// Pre-tokenizers: known splits of each standard pattern, and coverage of any bytes.
#include "kiln/tokenizer/pre_tokenizer.h"

#include <gtest/gtest.h>

#include <random>

#include "kiln/core/error.h"

namespace kiln::tok {
namespace {

std::vector<std::string> split(Pattern p, std::string_view text) {
  PreTokenizer pre(p);
  std::vector<std::string_view> pieces;
  pre.split(text, pieces);
  return {pieces.begin(), pieces.end()};
}

using V = std::vector<std::string>;

TEST(PreTokenizer, Gpt2) {
  EXPECT_EQ(split(Pattern::gpt2, "Hello world's  end123!!\n"),
            (V{"Hello", " world", "'s", " ", " end", "123", "!!", "\n"}));
}

TEST(PreTokenizer, Cl100k) {
  EXPECT_EQ(split(Pattern::cl100k, "Hello WORLD'S 12345 ...\n\n  x"),
            (V{"Hello", " WORLD", "'S", " ", "123", "45", " ...\n\n", " ", " x"}));
}

TEST(PreTokenizer, O200k) {
  EXPECT_EQ(split(Pattern::o200k, "HelloWorld don't a/b\n"),
            (V{"Hello", "World", " don't", " a", "/b", "\n"}));
}

TEST(PreTokenizer, NoneIsOnePiece) {
  EXPECT_EQ(split(Pattern::none, "a b c"), (V{"a b c"}));
}

TEST(PreTokenizer, NamesRoundTrip) {
  for (Pattern p : {Pattern::gpt2, Pattern::cl100k, Pattern::o200k, Pattern::llama3, Pattern::none})
    EXPECT_EQ(pattern_from_name(pattern_name(p)), p);
  EXPECT_EQ(pattern_from_name("cl100k_base"), Pattern::cl100k);
  EXPECT_EQ(pattern_from_name("nope"), std::nullopt);
}

TEST(PreTokenizer, PiecesCoverAnyBytes) {
  std::mt19937 rng(3);
  for (Pattern p : {Pattern::gpt2, Pattern::cl100k, Pattern::o200k, Pattern::llama3}) {
    PreTokenizer pre(p);
    for (int trial = 0; trial < 100; ++trial) {
      std::string s(rng() % 200, '\0');
      for (char& c : s) c = char(rng() % 4 == 0 ? rng() & 0xFF : " a\n1"[rng() % 4]);
      std::vector<std::string_view> pieces;
      pre.split(s, pieces);
      std::string joined;
      for (auto piece : pieces) {
        EXPECT_FALSE(piece.empty());
        joined += piece;
      }
      EXPECT_EQ(joined, s);
    }
  }
}

TEST(PreTokenizer, HandWrittenSplitMatchesTheRegex) {
  // Random strings over characters that stress every alternative: contractions in both cases,
  // each letter category (Lu Ll Lt Lm Lo), marks, numbers, ASCII and Unicode spaces, \r \n, '/',
  // punctuation, CJK, emoji. The regex (PCRE2) is the reference for the hand-written splitter.
  const std::vector<std::string> alphabet = {"'",
                                             "s",
                                             "S",
                                             "t",
                                             "T",
                                             "r",
                                             "R",
                                             "e",
                                             "E",
                                             "v",
                                             "V",
                                             "m",
                                             "M",
                                             "l",
                                             "L",
                                             "d",
                                             "D",
                                             "a",
                                             "Z",
                                             " ",
                                             " ",
                                             " ",
                                             "\t",
                                             "\r",
                                             "\n",
                                             "/",
                                             "!",
                                             ".",
                                             "-",
                                             "_",
                                             "0",
                                             "7",
                                             "\xC2\xB2" /* ² No */,
                                             "\xC2\xA0" /* nbsp */,
                                             "\xE3\x80\x80" /* ideographic space */,
                                             "\xC7\x85" /* ǅ Lt */,
                                             "\xCA\xB0" /* ʰ Lm */,
                                             "\xD7\x90" /* א Lo */,
                                             "\xCC\x81" /* combining acute Mn */,
                                             "\xC3\xA9" /* é */,
                                             "\xC3\x89" /* É */,
                                             "\xE4\xB8\xAD" /* 中 */,
                                             "\xED\x95\x9C" /* 한 */,
                                             "\xF0\x9F\x98\x80" /* 😀 */,
                                             "\xE2\x80\x8D" /* ZWJ */,
                                             "\xD9\xA3" /* ٣ Nd */,
                                             "\xE2\x85\xA7" /* Ⅷ Nl */,
                                             "\xE2\x80\xA8" /* line separator */};
  std::mt19937 rng(5);
  for (Pattern p : {Pattern::gpt2, Pattern::cl100k, Pattern::o200k, Pattern::llama3}) {
    PreTokenizer fast(p), regex(p, "", /*force_regex=*/true);
    for (int trial = 0; trial < 5000; ++trial) {
      std::string s;
      size_t len = rng() % 40;
      for (size_t i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
      std::vector<std::string_view> a, b;
      fast.split(s, a);
      regex.split(s, b);
      ASSERT_EQ((V{a.begin(), a.end()}), (V{b.begin(), b.end()}))
          << pattern_name(p) << " on '" << s << "'";
    }
  }
}

TEST(PreTokenizer, CustomRegexAndErrors) {
  PreTokenizer pre(Pattern::custom, "[0-9]+");
  std::vector<std::string_view> pieces;
  pre.split("ab12cd345", pieces);  // gaps between matches are pieces too
  EXPECT_EQ((V{pieces.begin(), pieces.end()}), (V{"ab", "12", "cd", "345"}));
  EXPECT_THROW(PreTokenizer(Pattern::custom, "([a-z"), kiln::Error);
}

}  // namespace
}  // namespace kiln::tok

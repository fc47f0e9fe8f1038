// Stop strings cut the text exactly before the first occurrence, even when it spans pieces, and
// streamed output never shows a character that later turns out to be part of a stop string.
#include "kiln/infer/stop_strings.h"

#include <gtest/gtest.h>

#include "kiln/core/error.h"

namespace kiln {
namespace {

std::string run(std::vector<std::string> stops, std::vector<std::string> pieces, bool* hit) {
  StopStrings s(std::move(stops));
  std::string out;
  for (const auto& p : pieces) out += s.push(p);
  out += s.flush();
  *hit = s.hit();
  return out;
}

TEST(StopStrings, CutsExactlyAcrossPieces) {
  bool hit;
  EXPECT_EQ(run({"o w"}, {"Hel", "lo", " wor", "ld"}, &hit), "Hell");
  EXPECT_TRUE(hit);
  EXPECT_EQ(run({"###"}, {"a#", "#", "b", "##", "#c"}, &hit), "a##b");
  EXPECT_TRUE(hit);
  EXPECT_EQ(run({"xyz", "b"}, {"a", "bxyz"}, &hit), "a");  // the earliest stop wins
  EXPECT_EQ(run({"END"}, {"the E", "N", "d"}, &hit), "the ENd");
  EXPECT_FALSE(hit);
  EXPECT_EQ(run({}, {"a", "b"}, &hit), "ab");
}

TEST(StopStrings, HoldsBackOnlyPossibleStarts) {
  StopStrings s({"\n###"});
  EXPECT_EQ(s.push("hi\n#"), "hi");
  EXPECT_EQ(s.push("x"), "\n#x");
  EXPECT_EQ(s.push("\n##"), "");
  EXPECT_EQ(s.push("#tail"), "");
  EXPECT_TRUE(s.hit());
  EXPECT_EQ(s.push("more"), "");
}

TEST(StopStrings, EmptyStopIsAnError) {
  EXPECT_THROW(StopStrings({""}), Error);
}

// TextStream: ids in, whole characters out, cut before a stop string; finish() gives the held
// text, or nothing after a stop.
TEST(TextStream, WholeCharactersCutBeforeTheStop) {
  Tokenizer tok = Tokenizer::byte_level({});
  auto run_ids = [&](const std::string& text, std::vector<std::string> stops, bool* hit) {
    TextStream ts(tok, std::move(stops));
    std::string out;
    for (int32_t id : tok.encode(text)) {
      const std::string piece = ts.push(id);
      EXPECT_NE(piece, "\xE2") << "half a character";
      out += piece;
    }
    *hit = ts.hit();
    return out + ts.finish();
  };
  bool hit = false;
  EXPECT_EQ(run_ids("a \xE2\x82\xAC b", {"x"}, &hit), "a \xE2\x82\xAC b");
  EXPECT_FALSE(hit);
  EXPECT_EQ(run_ids("a \xE2\x82\xAC b\nc", {" b\n"}, &hit), "a \xE2\x82\xAC");
  EXPECT_TRUE(hit);
  EXPECT_EQ(run_ids("ab\xE2\x82", {"zz"}, &hit), "ab\xE2\x82");  // the incomplete end, at finish
}

}  // namespace
}  // namespace kiln

// Tokenizer: byte-level vocabulary, specials, save/load through tokenizer.json, decode round
// trips of arbitrary bytes, and the incremental (streaming) decoder.
#include "kiln/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "io/io_test_util.h"
#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/tokenizer/byte_unicode.h"
#include "oracle.h"

namespace kiln {
namespace {

std::filesystem::path temp_dir() {
  return std::filesystem::temp_directory_path() / ("kiln_tok_" + std::to_string(::getpid()));
}

std::string temp_path(const std::string& name) {
  std::filesystem::create_directories(temp_dir());
  return (temp_dir() / name).string();
}

// Removes the files the tests wrote.
class TempDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override { std::filesystem::remove_all(temp_dir()); }
};
const auto* const cleanup = ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() & 0xFF);
  return s;
}

TEST(ByteUnicode, RoundTripsEveryByte) {
  for (int b = 0; b < 256; ++b) {
    std::string out;
    ASSERT_TRUE(tok::unicode_to_bytes(tok::byte_to_unicode(uint8_t(b)), out));
    EXPECT_EQ(out, std::string(1, char(b)));
  }
  EXPECT_EQ(tok::byte_to_unicode(' '), "\xC4\xA0");   // "Ġ"
  EXPECT_EQ(tok::byte_to_unicode('\n'), "\xC4\x8A");  // "Ċ"
  EXPECT_EQ(tok::byte_to_unicode('a'), "a");
}

TEST(ByteLevel, VocabularyAndIds) {
  Tokenizer t = Tokenizer::byte_level({"<|endoftext|>", "<|pad|>"});
  EXPECT_EQ(t.vocab_size(), 258);
  EXPECT_EQ(t.special_id("<|endoftext|>"), 256);
  EXPECT_EQ(t.special_id("<|pad|>"), 257);
  EXPECT_EQ(t.special_id("<|nope|>"), std::nullopt);
  EXPECT_EQ(t.eos_id(), 256);
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{'a', 'b'}));
  EXPECT_EQ(t.token_bytes(200), std::string(1, char(200)));
  EXPECT_EQ(t.token_bytes(257), "<|pad|>");
  EXPECT_THROW(t.token_bytes(258), Error);
  EXPECT_THROW(t.token_bytes(-1), Error);
  EXPECT_FALSE(Tokenizer::byte_level({}).eos_id().has_value());
}

TEST(ByteLevel, RoundTripsArbitraryBytes) {
  Tokenizer t = Tokenizer::byte_level({"<|endoftext|>"});
  std::mt19937 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s = random_bytes(rng, rng() % 300);
    auto ids = t.encode(s);
    EXPECT_EQ(ids.size(), s.size());
    EXPECT_EQ(t.decode(ids), s);
  }
  std::string invalid = "\xFF\xFE\xC0\x80 ok \xED\xA0\x80 \xF4\x90\x80\x80";
  EXPECT_EQ(t.decode(t.encode(invalid)), invalid);
}

TEST(ByteLevel, SpecialsAreNeverSplitWhenAllowed) {
  Tokenizer t = Tokenizer::byte_level({"<|endoftext|>", "<|end|>"});
  std::string text = "a<|endoftext|>b<|end|><|endoftext|>";
  auto with = t.encode(text, /*allow_special=*/true);
  EXPECT_EQ(with, (std::vector<int32_t>{'a', 256, 'b', 257, 256}));
  EXPECT_EQ(t.decode(with), text);
  // Without allow_special the same characters are plain text.
  auto without = t.encode(text, /*allow_special=*/false);
  EXPECT_EQ(without.size(), text.size());
  for (int32_t id : without) EXPECT_LT(id, 256);
  EXPECT_EQ(t.decode(without), text);
  // A special at the very start and end, and a partial one.
  EXPECT_EQ(t.encode("<|end|>", true), (std::vector<int32_t>{257}));
  EXPECT_EQ(t.encode("<|en", true).size(), 4u);
}

TEST(ByteLevel, SaveLoadIsIdentical) {
  Tokenizer t = Tokenizer::byte_level({"<|endoftext|>", "<|user|>"});
  std::string path = temp_path("byte_level.json");
  t.save(path);
  Tokenizer u = Tokenizer::load(path);
  EXPECT_EQ(u.vocab_size(), t.vocab_size());
  EXPECT_EQ(u.special_id("<|user|>"), 257);
  EXPECT_EQ(u.eos_id(), t.eos_id());
  for (int32_t id = 0; id < t.vocab_size(); ++id) EXPECT_EQ(u.token_bytes(id), t.token_bytes(id));
  std::mt19937 rng(2);
  for (int trial = 0; trial < 50; ++trial) {
    std::string s = random_bytes(rng, rng() % 200) + "<|user|>x<|endoftext|>";
    EXPECT_EQ(u.encode(s, true), t.encode(s, true));
    EXPECT_EQ(u.encode(s, false), t.encode(s, false));
  }
  // Saving the loaded one gives the same file.
  std::string path2 = temp_path("byte_level2.json");
  u.save(path2);
  EXPECT_EQ(read_file(path), read_file(path2));
}

TEST(ByteLevel, SavedFileIsHuggingFaceByteLevelBpe) {
  std::string path = temp_path("hf.json");
  Tokenizer::byte_level({"<|endoftext|>"}).save(path);
  std::string text = read_file(path);
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["vocab"].size(), 256u);
  EXPECT_EQ(j["model"]["vocab"]["\xC4\xA0"], 32);  // "Ġ" is the space byte
  EXPECT_EQ(j["model"]["vocab"]["!"], 33);
  EXPECT_TRUE(j["model"]["merges"].empty());
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(j["pre_tokenizer"]["use_regex"], false);
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  ASSERT_EQ(j["added_tokens"].size(), 1u);
  EXPECT_EQ(j["added_tokens"][0]["id"], 256);
  EXPECT_EQ(j["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
}

TEST(Load, BadFilesNameTheProblem) {
  std::string path = temp_path("bad.json");
  write_file_atomic(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, ");
  try {
    Tokenizer::load(path);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("JSON"), std::string::npos) << e.what();
  }
  write_file_atomic(path, R"({"model": {"type": "Unigram", "vocab": []}})");
  EXPECT_THROW(Tokenizer::load(path), Error);
  write_file_atomic(path,
                    R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]},
                             "decoder": {"type": "ByteLevel"}})");
  try {
    Tokenizer::load(path);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.merges[0]"), std::string::npos) << e.what();
  }
}

std::string error_of(const std::string& path) {
  try {
    Tokenizer::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Load, BadRankFileNamesTheLine) {
  std::string path = temp_path("bad.tiktoken");
  std::string good;
  for (int b = 0; b < 256; ++b) {
    // base64 of one byte
    static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    good += str(a[b >> 2], a[(b & 3) << 4], "== ", b, "\n");
  }
  write_file_atomic(path, good + "YWI= 256\n");
  LoadOptions opts;
  opts.pattern = Pattern::gpt2;
  Tokenizer t = Tokenizer::load(path, opts);
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{256}));
  EXPECT_NE(error_of(path).find("give the pattern"), std::string::npos) << error_of(path);
  write_file_atomic(path, good + "YWI= 256\nnot base64! 257\n");
  EXPECT_NE(error_of(path).find(":258:"), std::string::npos) << error_of(path);
  write_file_atomic(path, good + "YWI= 12x\n");
  EXPECT_NE(error_of(path).find("is not a number"), std::string::npos) << error_of(path);
  opts.specials = {{"<|x|>", 256}};  // id taken by "ab"
  write_file_atomic(path, good + "YWI= 256\n");
  EXPECT_THROW(Tokenizer::load(path, opts), Error);
  opts.specials = {{"<|x|>", 257}};
  EXPECT_EQ(Tokenizer::load(path, opts).encode("<|x|>ab", true), (std::vector<int32_t>{257, 256}));
  write_file_atomic(path, "YWI= 0\n");  // no single bytes
  EXPECT_NE(error_of(path).find("single bytes"), std::string::npos) << error_of(path);
}

TEST(Load, TruncatedSentencePieceModelIsAnError) {
  std::string path = temp_path("bad.model");
  // One piece message, cut short: field 1, length 20, then 3 bytes.
  write_file_atomic(path, std::string("\x0A\x14\x0A\x01", 4) + "ab");
  std::string err = error_of(path);
  EXPECT_NE(err.find(path), std::string::npos) << err;
  EXPECT_NE(err.find("runs past the end"), std::string::npos) << err;
}

// Crafted files (issue 17): ids that would index out of bounds or size a huge table are rejected
// before anything is allocated from them, naming the file, the field, the value and the limit.
TEST(Load, CraftedIdsNameFieldValueAndLimit) {
  kiln::testing::TempDir dir;
  using kiln::testing::has;
  auto load_error = [&](const std::string& name, const std::string& content) {
    const std::string path = dir.file(name);
    write_file_atomic(path, content);
    std::string e = kiln::testing::error_of([&] { Tokenizer::load(path); });
    EXPECT_TRUE(has(e, path));
    return e;
  };
  // The SentencePiece-style branch (Metaspace, no ByteLevel) wrote pieces[id] unchecked.
  auto sp_json = [](const std::string& vocab) {
    return R"({"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"},
               "model": {"type": "BPE", "vocab": {"<unk>": 0, )" +
           vocab + R"(}, "merges": []}})";
  };
  std::string e = load_error("neg.json", sp_json(R"("a": -5)"));
  EXPECT_TRUE(has(e, "model.vocab['a'] = -5 is negative"));
  e = load_error("huge.json", sp_json(R"("a": 2147483000)"));
  EXPECT_TRUE(has(e, "model.vocab['a'] = 2147483000 is over kiln's limit of 16777215"));
  e = load_error("dup.json", sp_json(R"("a": 0)"));
  EXPECT_TRUE(has(e, "gives id 0 to '<unk>' and 'a'"));
  // An added token's id sized the id table (2^31 strings) before any check.
  e = load_error("added.json", R"({"added_tokens": [{"id": 2147483000, "content": "<x>"}],
      "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},
      "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  EXPECT_TRUE(has(e, "added_tokens[0].id = 2147483000 is over kiln's limit of 16777215"));
  // One tiktoken line resized the token table to a billion entries.
  e = load_error("one.tiktoken", "YQ== 999999999\n");
  EXPECT_TRUE(has(e, ":1: rank = 999999999 is over kiln's limit of 16777215"));
  // Nesting past the limit is rejected before parsing: the walkers here recurse once per level.
  e = load_error("deep.json", R"({"model": {}, "pre_tokenizer": )" + std::string(100000, '[') +
                                  std::string(100000, ']') + "}");
  EXPECT_TRUE(has(e, "JSON nesting depth is over kiln's limit of 128"));
}

TEST(IncrementalDecoder, EmitsOnlyCompleteUtf8) {
  Tokenizer t = Tokenizer::byte_level({"<|endoftext|>"});
  std::string text = "h\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80!";  // "hé € 😀!"
  IncrementalDecoder dec(t);
  std::string streamed;
  for (int32_t id : t.encode(text)) {
    std::string piece = dec.push(id);
    // Every emitted chunk is valid UTF-8 on its own.
    for (size_t i = 0; i < piece.size();) {
      auto c = uint8_t(piece[i]);
      size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      ASSERT_LE(i + len, piece.size()) << "split character in chunk";
      i += len;
    }
    streamed += piece;
  }
  streamed += dec.flush();
  EXPECT_EQ(streamed, text);

  // The euro sign arrives in three pieces: nothing, nothing, then the character.
  IncrementalDecoder d2(t);
  EXPECT_EQ(d2.push(0xE2), "");
  EXPECT_EQ(d2.push(0x82), "");
  EXPECT_EQ(d2.push(0xAC), "\xE2\x82\xAC");
  // Invalid bytes are passed through, not held.
  EXPECT_EQ(d2.push(0xFF), "\xFF");
  EXPECT_EQ(d2.push(256), "<|endoftext|>");
  // An incomplete character is returned by flush.
  EXPECT_EQ(d2.push(0xF0), "");
  EXPECT_EQ(d2.flush(), "\xF0");
}

// encode_at_most: under the limit it is encode(); over it, it stops after a prefix of encode()'s
// ids just past the limit, having encoded a prefix of the text (the bytes it reports), on the
// byte path, pre-tokenized BPE (cl100k) and SentencePiece (Llama 2), with special tokens.
TEST(EncodeAtMost, StopsJustPastTheLimitWithAPrefixOfTheIds) {
  KILN_REQUIRE_REFS();
  std::vector<std::pair<std::string, Tokenizer>> toks;
  toks.emplace_back("byte", Tokenizer::byte_level({"<|endoftext|>"}));
  toks.emplace_back("cl100k", Tokenizer::load(oracle::gpt_file("cl100k")));
  toks.emplace_back("llama2", Tokenizer::load(oracle::ref_file("llama2.model")));
  std::string text = read_file(oracle::source_dir() + "/data/brown.txt").substr(0, 20000);
  text.insert(5000, "<|endoftext|>");
  for (const auto& [name, tok] : toks) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> all = tok.encode(text, special);
      Tokenizer::Encoded whole = tok.encode_at_most(text, all.size(), special);
      EXPECT_EQ(whole.ids, all) << name;
      EXPECT_EQ(whole.bytes, text.size()) << name;
      for (size_t limit : {size_t(0), size_t(1), size_t(100), all.size() / 2, all.size() - 1}) {
        Tokenizer::Encoded e = tok.encode_at_most(text, limit, special);
        ASSERT_GT(e.ids.size(), limit) << name << " limit " << limit;
        EXPECT_LT(e.ids.size(), limit + 64) << name << " limit " << limit;
        EXPECT_TRUE(std::equal(e.ids.begin(), e.ids.end(), all.begin())) << name;
        if (limit <= all.size() / 2) EXPECT_LT(e.bytes, text.size()) << name << " " << limit;
        EXPECT_GE(e.bytes, e.ids.size() / 2) << name << " limit " << limit;
      }
    }
  }
}

}  // namespace
}  // namespace kiln

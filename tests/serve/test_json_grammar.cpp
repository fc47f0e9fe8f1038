// The JSON-schema grammar (serve/json_grammar.h): whole valid documents are accepted and finish,
// every prefix of one is accepted, invalid bytes are refused at the first wrong byte, random
// walks through the automaton always end in text that parses (nlohmann) and fits the schema, and
// the trie-walked token mask equals feeding every token's bytes one by one.
#include "kiln/serve/json_grammar.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"

namespace kiln::serve {
namespace {

const char* kSchema = R"({"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 5},
    "kind": {"enum": ["cat", "dog", 12, 123, null]},
    "age": {"type": "integer"},
    "score": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1,
             "maxItems": 2},
    "pos": {"type": "object", "properties": {"x": {"type": "number"}, "ok": {"type": "boolean"}},
            "required": ["ok"]},
    "any": {}},
  "required": ["name", "kind", "tags"]})";

bool accepts(const std::shared_ptr<const JsonSchema>& s, const std::string& text, bool* fin) {
  JsonGrammar g(s);
  for (size_t i = 0; i < text.size(); ++i)
    if (!g.feed(text[i])) return false;
  *fin = g.finished();
  return true;
}

TEST(JsonGrammar, AcceptsValidDocumentsAndEachPrefix) {
  auto s = JsonSchema::compile(kSchema);
  const std::string docs[] = {
      R"({"name": "ab", "kind": "cat", "tags": ["x"]})",
      R"({"name":"a\"\u00e9","kind":null,"age":-0,"score":1.5e-3,"tags":["ab","\n"],)"
      R"("pos":{"ok":true},"any":{"k":[1,{"z":null}]}})",
      "{\n\"name\": \"\xc3\xa9\xe2\x82\xac\", \"kind\": 123, \"tags\": [\"\"], \"pos\": "
      "{\"x\": 0.25, \"ok\": false}}",
      R"({ "name" : "" , "kind" : 12 , "tags" : [ "a" , "b" ] })",
  };
  for (const std::string& d : docs) {
    SCOPED_TRACE(d);
    ASSERT_TRUE(nlohmann::json::accept(d));
    JsonGrammar g(s);
    for (size_t i = 0; i < d.size(); ++i) {
      ASSERT_FALSE(g.finished()) << "finished early at byte " << i;
      ASSERT_TRUE(g.feed(d[i])) << "refused byte " << i << " '" << d[i] << "'";
    }
    EXPECT_TRUE(g.finished());
    EXPECT_TRUE(g.can_end());
    EXPECT_FALSE(g.feed(' ')) << "nothing may follow the value";
  }
}

TEST(JsonGrammar, RefusesInvalidBytes) {
  auto s = JsonSchema::compile(kSchema);
  // (text, the prefix length that is still valid): the next byte is refused.
  const std::pair<std::string, size_t> bad[] = {
      {R"({"kind": "cat"})", 2},                                // required "name" skipped
      {R"({"name": "a", "kind": "cat", "tags": ["x"],})", 43},  // trailing comma: no more keys
      {R"({"name": "a"})", 12},                                 // '}' before required keys
      {R"({"name": "abcdef")", 15},                             // maxLength 5
      {R"({"name": "a", "kind": "cow")", 24},                   // not in the enum
      {R"({"name": "a", "kind": 1234)", 25},                    // 123 is the longest number
      {R"({"name": "a", "kind": "cat", "age": 01)", 37},        // leading zero
      {R"({"name": "a", "kind": "cat", "age": 1.5)", 37},       // integer
      {R"({"name": "a", "kind": "cat", "tags": [])", 38},       // minItems 1
      {R"({"name": "a", "kind": "cat", "tags": ["a","b","c"])", 45},  // maxItems 2
      {R"({"name": "\ud800")", 12},                                   // lone surrogate
      {"{\"name\": \"a\tb\"", 11},                                    // control character
      {"{   \"name\"", 3},                                            // whitespace bound
      {"{\"name\": \"\xc3\x28\"", 11},                                // invalid UTF-8
      {"{\"name\": \"\xed\xa0\x80\"", 11},                            // UTF-8 surrogate
      {R"({"name": "a", "extra": 1)", 15},                            // unknown key
      {" {}", 0},                                                     // leading whitespace
  };
  for (const auto& [text, ok] : bad) {
    SCOPED_TRACE(text);
    JsonGrammar g(s);
    size_t i = 0;
    while (i < text.size() && g.feed(text[i])) ++i;
    EXPECT_EQ(i, ok);
  }
}

// Checks v against the schema above, written apart from the grammar.
bool valid_instance(const nlohmann::json& v) {
  using J = nlohmann::json;
  auto str = [](const J& x, size_t most) {
    if (!x.is_string()) return false;
    size_t chars = 0;
    for (unsigned char ch : x.get<std::string>()) chars += (ch & 0xC0) != 0x80;
    return chars <= most;
  };
  if (!v.is_object()) return false;
  for (auto it = v.begin(); it != v.end(); ++it)
    if (!std::set<std::string>{"name", "kind", "age", "score", "tags", "pos", "any"}.count(
            it.key()))
      return false;
  if (!v.contains("name") || !str(v["name"], 5)) return false;
  if (!v.contains("kind")) return false;
  const J& k = v["kind"];
  if (!(k == "cat" || k == "dog" || k == 12 || k == 123 || k.is_null())) return false;
  if (v.contains("age") && !v["age"].is_number_integer()) return false;
  if (v.contains("score") && !v["score"].is_number()) return false;
  if (!v.contains("tags") || !v["tags"].is_array()) return false;
  if (v["tags"].size() < 1 || v["tags"].size() > 2) return false;
  for (const J& t : v["tags"])
    if (!str(t, 3)) return false;
  if (v.contains("pos")) {
    const J& p = v["pos"];
    if (!p.is_object() || !p.contains("ok") || !p["ok"].is_boolean()) return false;
    if (p.contains("x") && !p["x"].is_number()) return false;
    if (p.size() != 1 + p.contains("x")) return false;
  }
  return true;
}

// Random walks over the byte-level mask (every byte the grammar allows, uniformly): each ends
// in a finished value that parses and validates. Closing bytes get extra weight so walks end.
TEST(JsonGrammar, RandomWalksCompleteAndValidate) {
  auto s = JsonSchema::compile(kSchema);
  std::vector<std::string> bytes(256);
  for (int b = 0; b < 256; ++b) bytes[size_t(b)] = std::string(1, char(b));
  auto trie = std::make_shared<const VocabTrie>(bytes, std::nullopt);
  Rng rng(17);
  for (int walk = 0; walk < 200; ++walk) {
    JsonConstraint c(s, trie);
    std::string text;
    while (!c.complete()) {
      ASSERT_LT(text.size(), 4000u) << text;
      const std::vector<uint64_t> ok = c.allowed();
      std::vector<int32_t> choices;
      for (int b = 0; b < 256; ++b)
        if (ok[size_t(b) / 64] >> (b % 64) & 1)
          for (int w = 0; w < (std::strchr("\"}],", b) && b ? 40 : 1); ++w) choices.push_back(b);
      ASSERT_FALSE(choices.empty()) << text;
      const int32_t t = choices[size_t(rng.below(choices.size()))];
      c.accept(t);
      text += char(t);
    }
    SCOPED_TRACE(text);
    nlohmann::json v = nlohmann::json::parse(text, nullptr, false);
    ASSERT_FALSE(v.is_discarded());
    EXPECT_TRUE(valid_instance(v));
  }
}

// Multi-byte tokens: the trie walk allows exactly the tokens whose bytes the grammar accepts,
// and eos once the value may end (a top-level number may go on, or end).
TEST(JsonGrammar, TrieMaskEqualsFeedingEachToken) {
  std::vector<std::string> vocab = {"{\"", "name", "\":",  " \"",  "ab",   "\",",  "\"}", "12", "3",
                                    ".5",  "}",    "\"",   "kind", "cat",  "true", "nul", "l",  "",
                                    "{",   " ",    "\": ", "e-",   "tags", "[\"",  "\"]"};
  auto trie = std::make_shared<const VocabTrie>(vocab, 17);  // "" at 17: the eos id
  for (const char* schema : {kSchema, R"({"type": "number"})", R"({})"}) {
    auto s = JsonSchema::compile(schema);
    Rng rng(3);
    JsonConstraint c(s, trie);
    JsonGrammar g(s);
    for (int step = 0; step < 12 && !c.complete(); ++step) {
      const std::vector<uint64_t> bits = c.allowed();
      std::vector<int32_t> ok;
      for (int32_t t = 0; t < int32_t(vocab.size()); ++t) {
        JsonGrammar h = g;
        const bool want = t == 17 ? g.can_end() : h.feed(vocab[size_t(t)]);
        EXPECT_EQ(bool(bits[0] >> t & 1), want) << schema << " token '" << vocab[size_t(t)] << "'";
        if (want && t != 17) ok.push_back(t);
      }
      if (ok.empty()) break;
      const int32_t t = ok[size_t(rng.below(ok.size()))];
      c.accept(t);
      ASSERT_TRUE(g.feed(vocab[size_t(t)]));
    }
  }
}

TEST(JsonGrammar, MasksAreCachedPerState) {
  auto s = JsonSchema::compile(R"({"type": "array", "items": {"type": "string"}})");
  std::vector<std::string> bytes(128);
  for (int b = 0; b < 128; ++b) bytes[size_t(b)] = std::string(1, char(b));
  JsonConstraint c(s, std::make_shared<const VocabTrie>(bytes, std::nullopt));
  std::vector<float> logits(128);
  const std::string text = "[\"abcdefghijklmnopqrstuvwxyz\",\"abcdefghij\"]";
  for (char ch : text) {
    std::fill(logits.begin(), logits.end(), 0.0f);
    ASSERT_TRUE(c.mask(logits.data(), 128));
    ASSERT_EQ(logits[size_t(ch)], 0.0f) << ch;
    c.accept(ch);
  }
  EXPECT_TRUE(c.complete());
  // States: '[' next, after '[', in string 1 (one state however long), after it, after ',',
  // in string 2, after it (the array counts its items); the other 37 steps hit the cache.
  EXPECT_EQ(c.trie_walks(), 7);
}

TEST(JsonGrammar, UnsupportedSchemasAreClearErrors) {
  for (const char* bad :
       {R"({"type": "string", "pattern": "a+"})", R"({"type": ["string", "null"]})",
        R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})",
        R"({"type": "array", "minItems": 3, "maxItems": 2})", "{nope", R"({"type": "date"})"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(JsonSchema::compile(bad), Error);
  }
  // json_object: any object.
  bool fin = false;
  EXPECT_TRUE(accepts(JsonSchema::any_object(), R"({"a": [1, "x", {"b": false}]})", &fin));
  EXPECT_TRUE(fin);
  EXPECT_FALSE(accepts(JsonSchema::any_object(), "[1]", &fin));
}

}  // namespace
}  // namespace kiln::serve

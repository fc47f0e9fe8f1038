// The tokenizer.json pipeline (hf_pipeline.cpp) for the models without an npm package of their
// own, written here from their published structure over a real vocabulary, against
// @huggingface/tokenizers (Transformers.js) running the same file: Mistral v0.3 / Mixtral 8x22B
// (Metaspace, prepend_scheme "first"), Phi-3 (Llama 2's pipeline, chat tokens with rstrip),
// Phi-4 (byte-level, cl100k-style Split), SmolLM (Digits + ByteLevel with its regex), Gemma 2
// (Replace normalizer, no pre-tokenizer), and a Replace with a Regex pattern. Mistral v0.1 /
// Mixtral 8x7B ship Llama 2's pipeline and Qwen 2.5 ships Qwen3's (test_oracle_models.cpp covers
// both files). Then Split's behaviors and the other pre-tokenizers by hand (Transformers.js runs
// every behavior as Isolated), and bad files: one message naming the file, the JSON path and the
// fix, never a crash.
#include "kiln/core/error.h"
#include "kiln/tokenizer/tokenizer_impl.h"
#include "oracle.h"

namespace kiln {
namespace {

using namespace oracle;
using nlohmann::json;

// Writes `j` to a temporary tokenizer.json and returns its path.
std::string write_json(const std::string& name, const json& j) {
  std::string path =
      (std::filesystem::temp_directory_path() / ("kiln_pipeline_" + name + ".json")).string();
  write_file_atomic(path, j.dump());
  return path;
}

json read_json(const std::string& path) {
  return json::parse(read_file(path));
}

std::vector<std::string> sample() {
  auto texts = nlp_corpus(400);
  auto a = adversarial();
  texts.insert(texts.end(), a.begin(), a.end());
  return texts;
}

json metaspace(const char* scheme) {
  return {{"type", "Metaspace"},
          {"replacement", "\xE2\x96\x81"},
          {"prepend_scheme", scheme},
          {"split", false}};
}
json template_bos(const std::string& bos, int id) {
  return {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair", json::array()},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {id}}, {"tokens", {bos}}}}}}};
}
json added(int id, const std::string& text, bool rstrip) {
  return {{"id", id},         {"content", text},     {"single_word", false}, {"lstrip", false},
          {"rstrip", rstrip}, {"normalized", false}, {"special", true}};
}

void check_against_tokenizers_js(const std::string& name, const json& j) {
  std::string path = write_json(name, j);
  Tokenizer tok = Tokenizer::load(path);
  expect_same_as_reference(tok, "hf:" + path, sample());
  std::filesystem::remove(path);
}

TEST(HfPipelineModels, MistralV3Metaspace) {
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("llama2"));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = metaspace("first");
  j["decoder"] = metaspace("first");
  j["post_processor"] = template_bos("<s>", 1);
  check_against_tokenizers_js("mistral", j);
}

TEST(HfPipelineModels, ReplaceRegexNormalizer) {
  // Llama 2's pipeline after a Replace with a Regex pattern (runs of whitespace -> one space).
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("llama2"));
  j["normalizer"]["normalizers"].insert(
      j["normalizer"]["normalizers"].begin(),
      json::object({{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}}));
  // @huggingface/tokenizers 0.2.0 reads \s here as Rust's White_Space (U+0085 in, U+FEFF out);
  // kiln reads it everywhere as JavaScript's, as Transformers.js's Split does (pre_tokenizer.h):
  // the text with both is left out.
  std::string path = write_json("replace_regex", j);
  auto texts = sample();
  std::erase_if(texts, [](const std::string& t) { return t.find("\xC2\x85") != t.npos; });
  expect_same_as_reference(Tokenizer::load(path), "hf:" + path, texts);
  std::filesystem::remove(path);
}

TEST(HfPipelineModels, Phi3ChatTokensWithRstrip) {
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("llama2"));
  j["added_tokens"].push_back(added(32000, "<|endoftext|>", false));
  j["added_tokens"].push_back(added(32001, "<|assistant|>", true));
  j["added_tokens"].push_back(added(32007, "<|end|>", true));
  j["added_tokens"].push_back(added(32010, "<|user|>", true));
  std::string path = write_json("phi3", j);
  Tokenizer tok = Tokenizer::load(path);
  auto texts = sample();
  texts.push_back("<|user|>\n  Hi there<|end|>\n<|assistant|>  Hello!<|end|><|endoftext|>");
  expect_same_as_reference(tok, "hf:" + path, texts);
  std::filesystem::remove(path);
  // rstrip: the whitespace after the token goes with it.
  EXPECT_EQ(tok.encode("<|user|>   Hi", true), tok.encode("<|user|>Hi", true));
}

TEST(HfPipelineModels, Phi4ByteLevel) {
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("llama3"));
  j["added_tokens"] = {added(128000, "<|endoftext|>", false), added(128001, "<|im_start|>", false),
                       added(128002, "<|im_sep|>", false), added(128003, "<|im_end|>", false)};
  j["post_processor"] = {{"type", "ByteLevel"},
                         {"add_prefix_space", false},
                         {"trim_offsets", true},
                         {"use_regex", false}};
  check_against_tokenizers_js("phi4", j);
}

TEST(HfPipelineModels, SmolLMDigitsAndByteLevelRegex) {
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("qwen3"));
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Digits"}, {"individual_digits", true}},
                          {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}}}}};
  std::string path = write_json("smollm", j);
  Tokenizer tok = Tokenizer::load(path);
  // Transformers.js's Digits splits ASCII digits only (JavaScript's \d); Hugging Face's, which
  // kiln follows, every \p{N} (Rust's char::is_numeric): texts with other digits are left out.
  auto texts = sample();
  std::erase_if(texts, [](const std::string& t) {
    for (const char* n : {"\xEF\xBC\x91", "\xE2\x85\xA7", "\xE2\x85\xB7", "\xD9\xA1", "\xE0\xA5"})
      if (t.find(n) != std::string::npos) return true;
    return false;
  });
  expect_same_as_reference(tok, "hf:" + path, texts);
  std::filesystem::remove(path);
  EXPECT_EQ(tok.encode("2024").size(), 4u);  // one token per digit
}

TEST(HfPipelineModels, Gemma2ReplaceWithoutPreTokenizer) {
  KILN_REQUIRE_REFS();
  json j = read_json(lenml_file("gemma3"));
  j["pre_tokenizer"] = nullptr;
  check_against_tokenizers_js("gemma2", j);
}

// ---- pre-tokenizers by hand (Hugging Face's semantics) ----

std::vector<std::string> pieces(const tok::PreTokenizer& p, std::string_view text) {
  std::vector<std::string_view> v;
  p.split(text, v);
  return {v.begin(), v.end()};
}

TEST(HfPipelineSplit, EveryBehavior) {
  using B = tok::SplitBehavior;
  auto split = [](B b, bool invert) {
    tok::PreTokenizer p(tok::Pattern::custom, ",");
    p.set_behavior(b, invert);
    return pieces(p, "a,b,,c");
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split(B::removed, false), (V{"a", "b", "c"}));
  EXPECT_EQ(split(B::isolated, false), (V{"a", ",", "b", ",", ",", "c"}));
  EXPECT_EQ(split(B::merged_with_previous, false), (V{"a,", "b,", ",", "c"}));
  EXPECT_EQ(split(B::merged_with_next, false), (V{"a", ",b", ",", ",c"}));
  EXPECT_EQ(split(B::contiguous, false), (V{"a", ",", "b", ",,", "c"}));
  EXPECT_EQ(split(B::removed, true), (V{",", ",", ","}));
}

TEST(HfPipelineSplit, OtherPreTokenizersInASequence) {
  // Whitespace, then Punctuation and Digits over each piece, from a file.
  json j = read_json([] {
    std::string p = (std::filesystem::temp_directory_path() / "kiln_pipeline_bytes.json").string();
    Tokenizer::byte_level({}).save(p);
    return p;
  }());
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Whitespace"}},
        {{"type", "Punctuation"}, {"behavior", "Isolated"}},
        {{"type", "Digits"}, {"individual_digits", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  Tokenizer tok = Tokenizer::load(write_json("sequence", j));
  std::vector<std::string_view> v;
  tok.impl().split("Hi, you2024x!?", v);
  EXPECT_EQ(std::vector<std::string>(v.begin(), v.end()),
            (std::vector<std::string>{"Hi", ",", "you", "2024", "x", "!", "?"}));
  EXPECT_NE(tok.info().pipeline.find("Whitespace"), std::string::npos);
}

// ---- bad files ----

std::string error_of(const std::string& name, const json& j) {
  std::string path = write_json(name, j);
  try {
    Tokenizer::load(path);
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "the message names the file: " << msg;
    return msg;
  }
  ADD_FAILURE() << name << " loaded";
  return "";
}

json small() {
  std::string p = (std::filesystem::temp_directory_path() / "kiln_pipeline_small.json").string();
  Tokenizer::byte_level({"<|endoftext|>"}).save(p);
  json j = read_json(p);
  std::filesystem::remove(p);
  return j;
}

TEST(HfPipelineErrors, UnsupportedComponentNamesItsPath) {
  json j = small();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Digits"}}, {{"type", "BertPreTokenizer"}}}}};
  EXPECT_NE(error_of("bert", j).find("pre_tokenizer.pretokenizers[1].type = \"BertPreTokenizer\""),
            std::string::npos);
  j = small();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Precompiled"}}}}};
  EXPECT_NE(error_of("precompiled", j).find("normalizer.normalizers[0].type = \"Precompiled\""),
            std::string::npos);
  j = small();
  j["post_processor"] = {{"type", "Frobnicate"}};
  EXPECT_NE(error_of("post", j).find("post_processor.type = \"Frobnicate\""), std::string::npos);
  j = small();
  j["model"]["dropout"] = 0.1;
  EXPECT_NE(error_of("dropout", j).find("model.dropout = 0.1"), std::string::npos);
  j = small();
  j["model"]["type"] = "Unigram";
  EXPECT_NE(error_of("unigram", j).find("model.type = \"Unigram\""), std::string::npos);
  j = small();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", ","}}}, {"behavior", "Sideways"}};
  EXPECT_NE(error_of("behavior", j).find("pre_tokenizer.behavior = \"Sideways\""),
            std::string::npos);
}

TEST(HfPipelineErrors, MalformedTruncatedAndOutOfRange) {
  json j = small();
  std::string text = j.dump();
  std::string path = write_json("truncated", j);
  write_file_atomic(path, text.substr(0, text.size() / 2));
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << "a truncated file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
  j = small();
  j["model"].erase("vocab");
  EXPECT_NE(error_of("novocab", j).find("no \"vocab\""), std::string::npos);
  j = small();
  j["added_tokens"][0]["id"] = int64_t(1) << 40;
  EXPECT_NE(error_of("bigid", j).find("added_tokens[0].id"), std::string::npos);
  j = small();
  j["post_processor"] = template_bos("<s>", 999999);
  EXPECT_NE(error_of("postid", j).find("999999"), std::string::npos);
  j = small();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", "oops"}};
  EXPECT_NE(error_of("notalist", j).find("pre_tokenizer.pretokenizers is not a list"),
            std::string::npos);
  Tokenizer tok = Tokenizer::byte_level({});
  EXPECT_THROW(tok.decode({5, 1 << 30}), Error);
  EXPECT_THROW(tok.decode({-3}), Error);
}

}  // namespace
}  // namespace kiln

// Hugging Face tokenizer.json with a BPE model: load and save. The model is byte-level (GPT-2's
// alphabet: Llama 3, Qwen, DeepSeek, gpt-oss) or character-level with byte fallback (Llama 2,
// Gemma, Mistral); vocab, merges as "a b" or ["a", "b"], ignore_merges (byte-level), fuse_unk,
// unk_token; the pipeline around it is hf_pipeline.h's; added_tokens with lstrip, rstrip and
// single_word. Anything else is an error naming its JSON path, rather than a tokenizer that
// silently encodes differently. save() writes the pipeline back as it was read.
#include <algorithm>
#include <filesystem>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/tokenizer/byte_unicode.h"
#include "kiln/tokenizer/hf_pipeline.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

namespace {

// One entry of model.merges: "a b" (older files) or ["a", "b"] (tokenizers >= 0.20).
std::pair<std::string, std::string> merge_pair(const nlohmann::json& e, size_t i,
                                               const std::string& path) {
  if (e.is_string()) {
    const auto text = e.get<std::string>();
    const size_t sp = text.find(' ');
    KILN_CHECK(sp != std::string::npos, "tokenizer", path, ": model.merges[", i, "] '", text,
               "' is not two tokens separated by a space");
    return {text.substr(0, sp), text.substr(sp + 1)};
  }
  KILN_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(), "tokenizer",
             path, ": model.merges[", i, "] is neither \"a b\" nor [\"a\", \"b\"]");
  return {e[0].get<std::string>(), e[1].get<std::string>()};
}

using nlohmann::json;
using nlohmann::ordered_json;

// A token id read from the file (`field` names where): an integer in [0, kMaxVocab), checked
// before anything is indexed or sized by it.
int32_t token_id(const json& v, const std::string& field, const std::string& path) {
  KILN_CHECK(v.is_number_integer(), "tokenizer", path, ": ", field, " = ", v.dump(),
             " is not an integer id");
  const int64_t id = v.is_number_unsigned()
                         ? int64_t(std::min<uint64_t>(v.get<uint64_t>(), uint64_t(INT64_MAX)))
                         : v.get<int64_t>();
  limits::check_limit("tokenizer", path, field, id, limits::kMaxVocab - 1);
  return int32_t(id);
}

// Each model.vocab entry's id, checked; the vocabulary's size is the largest id + 1.
int32_t max_vocab_id(const json& vocab, const std::string& path) {
  KILN_CHECK(vocab.is_object(), "tokenizer", path, ": model.vocab is not an object");
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    max_id = std::max(max_id, token_id(it.value(), str("model.vocab['", it.key(), "']"), path));
  return max_id;
}

bool is_type(const json& j, const char* type) {
  return j.is_object() && j.contains("type") && j["type"] == type;
}

bool mentions_byte_level(const json& j) {
  if (is_type(j, "ByteLevel")) return true;
  if (j.is_object())
    for (const char* key : {"pretokenizers", "decoders"})
      if (j.contains(key))
        for (const json& x : j[key])
          if (mentions_byte_level(x)) return true;
  return false;
}

// The eos a tokenizer_config.json beside the file names, if any.
std::optional<std::string> config_eos(const std::string& path) {
  auto cfg = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
  if (!file_exists(cfg.string())) return std::nullopt;
  try {
    json c = read_json_file(cfg.string());
    if (!c.contains("eos_token")) return std::nullopt;
    const json& e = c["eos_token"];
    if (e.is_string()) return e.get<std::string>();
    if (e.is_object() && e.contains("content")) return e["content"].get<std::string>();
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// added_tokens (specials are never split) and the eos id named by a tokenizer_config.json beside
// the file, if any.
void read_added_tokens(const json& j, const std::string& path, Tokenizer::Impl& impl) {
  if (j.contains("added_tokens"))
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& a = j["added_tokens"][i];
      KILN_CHECK(a.is_object() && a.contains("content") && a["content"].is_string() &&
                     !a["content"].get<std::string>().empty() && a.contains("id"),
                 "tokenizer", path, ": added_tokens[", i,
                 "] has no non-empty \"content\" or no \"id\": the file is malformed");
      Tokenizer::Impl::Added t{a["content"].get<std::string>(),
                               token_id(a["id"], str("added_tokens[", i, "].id"), path),
                               a.value("special", false)};
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      t.single_word = a.value("single_word", false);
      t.normalized = a.value("normalized", false);
      impl.added.push_back(std::move(t));
    }
  if (auto eos = config_eos(path))
    for (const auto& a : impl.added)
      if (a.text == *eos) impl.eos = a.id;
}

// A character-level BPE with byte fallback (Llama 2, Gemma, Mistral): pieces are UTF-8 text
// ("▁" where the normalizer or Metaspace put spaces), merged by the listed pairs, run by the
// SentencePiece engine on text the pipeline normalized.
Tokenizer::Impl load_char_model(const std::string& path, const json& j) {
  const json& m = j["model"];
  const json& vocab = m.at("vocab");
  std::vector<tok::SentencePiece::Piece> pieces(size_t(max_vocab_id(vocab, path) + 1));
  for (auto& p : pieces) p.type = tok::SentencePiece::Type::unused;
  std::string unk =
      m.value("unk_token", json()).is_string() ? m["unk_token"].get<std::string>() : "";
  std::vector<bool> is_special(pieces.size(), false);
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& a = j["added_tokens"][i];
      if (!a.is_object() || !a.contains("id")) continue;  // read_added_tokens says what is wrong
      auto id = size_t(token_id(a["id"], str("added_tokens[", i, "].id"), path));
      if (id < pieces.size() && a.value("special", false)) is_special[id] = true;
    }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    auto id = it->get<size_t>();  // checked by max_vocab_id
    tok::SentencePiece::Piece& p = pieces[id];
    KILN_CHECK(p.text.empty(), "tokenizer", path, ": model.vocab gives id ", id, " to '", p.text,
               "' and '", it.key(), "'");
    p.text = it.key();
    const std::string& t = p.text;
    bool byte = t.size() == 6 && t.starts_with("<0x") && t.back() == '>';
    p.type = t == unk         ? tok::SentencePiece::Type::unknown
             : is_special[id] ? tok::SentencePiece::Type::control
             : byte           ? tok::SentencePiece::Type::byte
                              : tok::SentencePiece::Type::normal;
  }
  std::unordered_map<uint64_t, int32_t> pair_rank;
  const json& merges = m.at("merges");
  KILN_CHECK(merges.is_array(), "tokenizer", path, ": model.merges is not a list");
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = merge_pair(merges[i], i, path);
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    KILN_CHECK(ia != vocab.end() && ib != vocab.end() && iab != vocab.end(), "tokenizer", path,
               ": model.merges[", i, "] '", a, " ", b,
               "' uses or makes a token not in model.vocab");
    pair_rank.emplace(uint64_t(ia->get<uint32_t>()) << 32 | ib->get<uint32_t>(), int32_t(i));
  }
  KILN_CHECK(!m.value("ignore_merges", false), "tokenizer", path,
             ": model.ignore_merges = true is not supported for a byte-fallback BPE");
  Tokenizer::Impl impl;
  impl.sp.emplace(std::move(pieces), /*add_dummy_prefix=*/false,
                  /*remove_extra_whitespaces=*/false, m.value("byte_fallback", false));
  impl.sp->set_raw_input(m.value("fuse_unk", false));
  impl.sp->set_merges(pair_rank);
  return impl;
}

// A byte-level BPE: tokens spelled in GPT-2's byte alphabet.
Tokenizer::Impl load_byte_model(const std::string& path, const json& j) {
  const json& m = j["model"];
  const json& vocab = m.at("vocab");
  std::vector<std::string> tokens(size_t(max_vocab_id(vocab, path) + 1));
  std::string bytes;
  auto is_added = [&](const std::string& text) {  // DeepSeek lists its specials in vocab too
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const json& a : j["added_tokens"])
        if (a.is_object() && a.value("content", json()) == text) return true;
    return false;
  };
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!tok::unicode_to_bytes(it.key(), bytes) && is_added(it.key())) continue;
    KILN_CHECK(tok::unicode_to_bytes(it.key(), bytes), "tokenizer", path, ": model.vocab token '",
               it.key(), "' is not spelled in the byte-level alphabet");
    std::string& slot = tokens[it.value().get<size_t>()];
    KILN_CHECK(slot.empty(), "tokenizer", path, ": model.vocab gives id ", it.value().get<int>(),
               " to two tokens");
    slot = bytes;
  }
  Tokenizer::Impl impl;
  impl.bpe = tok::Bpe(std::move(tokens));
  impl.bpe.set_ignore_merges(m.value("ignore_merges", false));
  const json& merges = m.at("merges");
  KILN_CHECK(merges.is_array(), "tokenizer", path, ": model.merges is not a list");
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = merge_pair(merges[i], i, path);
    auto id_of = [&](const std::string& spelled) {
      auto it = vocab.find(spelled);
      KILN_CHECK(it != vocab.end(), "tokenizer", path, ": model.merges[", i, "] uses '", spelled,
                 "', which is not in model.vocab");
      return it->get<int32_t>();
    };
    impl.bpe.add_merge(id_of(a), id_of(b), id_of(a + b), int32_t(i));
  }
  return impl;
}

// The BPE options kiln cannot run are refused by name.
void check_model_options(const std::string& path, const json& m) {
  const json& dropout = m.value("dropout", json());
  KILN_CHECK(dropout.is_null() || (dropout.is_number() && dropout.get<double>() == 0.0),
             "tokenizer", path, ": model.dropout = ", dropout.dump(),
             " is not supported (BPE dropout samples merges at random, for training only): set "
             "it to null");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& v = m.value(key, json());
    KILN_CHECK(v.is_null() || (v.is_string() && v.get<std::string>().empty()), "tokenizer", path,
               ": model.", key, " = ", v.dump(),
               " is not supported (kiln runs BPE without subword affixes): set it to null");
  }
  KILN_CHECK(m.contains("vocab") && m["vocab"].is_object() && m.contains("merges"), "tokenizer",
             path,
             ": model has no \"vocab\" object or no \"merges\": the file is malformed or "
             "truncated; re-export it");
}

}  // namespace

Tokenizer::Impl load_hf_json(const std::string& path, const std::string& content) {
  check_json_depth("tokenizer", path, content);
  json j;
  try {
    j = json::parse(content);
  } catch (const json::parse_error& e) {
    fail("tokenizer", path, ": not valid JSON at ", text_position(content, e.byte ? e.byte - 1 : 0),
         ": ", json_error_reason(e));
  }
  try {
    KILN_CHECK(j.contains("model"), "tokenizer", path,
               ": no \"model\" key: this is not a Hugging Face tokenizer.json");
    const json& m = j["model"];
    KILN_CHECK(m.is_object(), "tokenizer", path, ": model is not an object");
    std::string type = m.value("type", "BPE");
    KILN_CHECK(type == "BPE", "tokenizer", path, ": model.type = \"", type,
               "\" is not supported (kiln runs BPE models only)");
    check_model_options(path, m);
    const bool byte_level = mentions_byte_level(j.value("pre_tokenizer", json())) ||
                            mentions_byte_level(j.value("decoder", json()));
    Tokenizer::Impl impl = byte_level ? load_byte_model(path, j) : load_char_model(path, j);
    read_added_tokens(j, path, impl);
    read_hf_pipeline(path, j, byte_level, impl);
    json options = m;
    options.erase("vocab");
    options.erase("merges");
    impl.pipeline.model_options = options.dump();
    return impl;
  } catch (const json::exception& e) {
    fail("tokenizer", path, ": ", json_error_reason(e));
  }
}

namespace {

// vocab[key] = id for a key not in vocab yet, in O(1): ordered_json's operator[] searches its
// keys linearly, quadratic over a 262k-token vocabulary.
void append_unique(ordered_json& vocab, const std::string& key, size_t id) {
  auto& entries = vocab.get_ref<ordered_json::object_t&>();
  entries.std::vector<ordered_json::object_t::value_type>::emplace_back(key, id);
}

// model.vocab and model.merges of a byte-level BPE, spelled in GPT-2's alphabet.
void write_byte_model(const Tokenizer::Impl& impl, ordered_json& model) {
  ordered_json vocab = ordered_json::object();
  const auto& tokens = impl.bpe.tokens();
  std::vector<std::string> spelled(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (tokens[id].empty()) continue;
    spelled[id] = tok::bytes_to_unicode(tokens[id]);
    append_unique(vocab, spelled[id], id);
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [l, r, m] : impl.bpe.merges_by_rank())
    merges.push_back(ordered_json::array({spelled[size_t(l)], spelled[size_t(r)]}));
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
}

// model.vocab and model.merges of a character-level BPE with byte fallback.
void write_char_model(const tok::SentencePiece& sp, ordered_json& model) {
  ordered_json vocab = ordered_json::object();
  const auto& pieces = sp.pieces();
  for (size_t id = 0; id < pieces.size(); ++id)
    if (!pieces[id].text.empty()) append_unique(vocab, pieces[id].text, id);
  std::vector<std::pair<int32_t, uint64_t>> by_rank;
  for (const auto& [pair, rank] : sp.merges()) by_rank.emplace_back(rank, pair);
  std::sort(by_rank.begin(), by_rank.end());
  ordered_json merges = ordered_json::array();
  for (const auto& [rank, pair] : by_rank)
    merges.push_back(ordered_json::array(
        {pieces[size_t(pair >> 32)].text, pieces[size_t(pair & 0xFFFFFFFF)].text}));
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
}

// The pipeline kiln writes for a tokenizer that did not come from a tokenizer.json (tiktoken,
// trained): ByteLevel, with the split pattern as a Split.
void write_default_pipeline(const Tokenizer::Impl& impl, ordered_json& j) {
  j["normalizer"] = nullptr;
  auto byte_level = [](bool prefix, bool regex) {
    return ordered_json{{"type", "ByteLevel"},
                        {"add_prefix_space", prefix},
                        {"trim_offsets", true},
                        {"use_regex", regex}};
  };
  tok::Pattern p = impl.pre.pattern();
  if (p == tok::Pattern::none || p == tok::Pattern::gpt2) {
    j["pre_tokenizer"] = byte_level(impl.add_prefix_space, p == tok::Pattern::gpt2);
  } else {
    ordered_json split = {{"type", "Split"},
                          {"pattern", {{"Regex", impl.pre.regex()}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", {split, byte_level(impl.add_prefix_space, false)}}};
  }
  j["post_processor"] = nullptr;
  j["decoder"] = byte_level(true, true);
}

}  // namespace

std::string to_hf_json(const Tokenizer::Impl& impl) {
  const bool from_json = !impl.pipeline.model_options.empty();
  KILN_CHECK(!impl.sp || impl.sp->raw_input(), "tokenizer",
             "saving a SentencePiece model as tokenizer.json is not supported: keep its .model");
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ordered_json added = ordered_json::array();
  for (const auto& a : impl.added)
    added.push_back({{"id", a.id},
                     {"content", a.text},
                     {"single_word", a.single_word},
                     {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip},
                     {"normalized", a.normalized},
                     {"special", a.special}});
  j["added_tokens"] = added;
  ordered_json model;
  if (from_json) {
    for (const char* key : {"normalizer", "pre_tokenizer", "post_processor", "decoder"})
      j[key] = ordered_json::parse(key[0] == 'n'   ? impl.pipeline.normalizer
                                   : key[1] == 'r' ? impl.pipeline.pre_tokenizer
                                   : key[0] == 'p' ? impl.pipeline.post_processor
                                                   : impl.pipeline.decoder);
    model = ordered_json::parse(impl.pipeline.model_options);
  } else {
    write_default_pipeline(impl, j);
    model = {{"type", "BPE"},
             {"dropout", nullptr},
             {"unk_token", nullptr},
             {"continuing_subword_prefix", nullptr},
             {"end_of_word_suffix", nullptr},
             {"fuse_unk", false},
             {"byte_fallback", false},
             {"ignore_merges", impl.bpe.ignore_merges()}};
  }
  // Keys in sorted order, as a loaded file's components are kept (nlohmann::json), so saving a
  // loaded file again writes the same bytes.
  auto sorted = [](const ordered_json& x) { return ordered_json::parse(json(x).dump()); };
  for (const char* key : {"normalizer", "pre_tokenizer", "post_processor", "decoder"})
    j[key] = sorted(j[key]);
  model = sorted(model);
  if (impl.sp)
    write_char_model(*impl.sp, model);
  else
    write_byte_model(impl, model);
  j["model"] = std::move(model);
  return j.dump(2) + "\n";
}

}  // namespace kiln

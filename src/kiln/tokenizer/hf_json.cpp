// Hugging Face tokenizer.json for byte-level BPE models: load and save. Supported: model BPE
// (vocab, merges as "a b" or ["a", "b"], ignore_merges), pre_tokenizer ByteLevel (GPT-2),
// Split + ByteLevel (Llama 3) or null, decoder ByteLevel, added_tokens. Anything else is an
// error naming the key, rather than a tokenizer that silently encodes differently.
#include <filesystem>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/tokenizer/byte_unicode.h"
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

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

struct PreConfig {
  tok::Pattern pattern = tok::Pattern::none;
  std::string regex;
  bool add_prefix_space = false;
};

void parse_pre(const std::string& path, const json& p, const std::string& key, PreConfig& cfg) {
  if (p.is_null()) return;
  std::string type = p.value("type", "");
  if (type == "ByteLevel") {
    cfg.add_prefix_space = p.value("add_prefix_space", true);
    if (p.value("use_regex", true)) {
      KILN_CHECK(cfg.pattern == tok::Pattern::none, "tokenizer", path, ": ", key,
                 " splits twice (Split and ByteLevel use_regex): not supported");
      cfg.pattern = tok::Pattern::gpt2;
    }
  } else if (type == "Split") {
    KILN_CHECK(cfg.pattern == tok::Pattern::none, "tokenizer", path, ": ", key,
               " has a second Split: only one split pattern is supported");
    KILN_CHECK(p.value("behavior", "") == "Isolated" && !p.value("invert", false), "tokenizer",
               path, ": ", key, " is a Split with behavior '", p.value("behavior", ""),
               "' and invert ", p.value("invert", false),
               ": only behavior Isolated without invert is supported");
    const json& pat = p.at("pattern");
    if (pat.contains("Regex")) {
      cfg.regex = pat["Regex"].get<std::string>();
    } else if (pat.contains("String")) {
      cfg.regex = regex_escape(pat["String"].get<std::string>());
    } else {
      fail("tokenizer", path, ": ", key, ".pattern has neither Regex nor String");
    }
    cfg.pattern = tok::Pattern::custom;
  } else if (type == "Sequence") {
    const json& list = p.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre(path, list[i], str(key, ".pretokenizers[", i, "]"), cfg);
  } else {
    fail("tokenizer", path, ": ", key, " has type '", type,
         "': only ByteLevel, Split and Sequence are supported for byte-level BPE");
  }
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
      impl.added.push_back({a.at("content").get<std::string>(),
                            token_id(a.at("id"), str("added_tokens[", i, "].id"), path),
                            a.value("special", false)});
    }
  if (auto eos = config_eos(path))
    for (const auto& a : impl.added)
      if (a.text == *eos) impl.eos = a.id;
}

// Llama 2 style tokenizer.json: BPE over characters with "▁" for spaces and byte fallback
// (normalizer Prepend + Replace, or pre_tokenizer Metaspace), run by the SentencePiece engine
// with Hugging Face's merge list.
Tokenizer::Impl load_hf_sentencepiece(const std::string& path, const json& j) {
  const json& m = j["model"];
  const std::string kSpace = "\xE2\x96\x81";
  bool replace_space = false, prefix = false, first_only = false;
  const json norm = j.value("normalizer", json());
  std::vector<json> norms;
  if (is_type(norm, "Sequence")) {
    for (const json& x : norm.at("normalizers")) norms.push_back(x);
  } else if (!norm.is_null()) {
    norms.push_back(norm);
  }
  for (const json& x : norms) {
    std::string t = x.value("type", "");
    if (t == "Prepend" && x.value("prepend", "") == kSpace) {
      prefix = true;
    } else if (t == "Replace" && x.contains("pattern") && x["pattern"].value("String", "") == " " &&
               x.value("content", "") == kSpace) {
      replace_space = true;
    } else {
      fail("tokenizer", path, ": normalizer '", t,
           "' is not supported (only Prepend(\"\xE2\x96\x81\") and Replace(\" \", "
           "\"\xE2\x96\x81\"), as Llama 2 uses)");
    }
  }
  const json pre = j.value("pre_tokenizer", json());
  if (is_type(pre, "Metaspace")) {
    KILN_CHECK(!pre.value("split", false), "tokenizer", path,
               ": pre_tokenizer Metaspace with split true is not supported");
    replace_space = true;
    std::string scheme =
        pre.value("prepend_scheme", pre.value("add_prefix_space", true) ? "always" : "never");
    prefix = scheme != "never";
    first_only = scheme == "first";
  } else {
    KILN_CHECK(pre.is_null(), "tokenizer", path, ": pre_tokenizer '", pre.value("type", "?"),
               "' is not supported for a SentencePiece-style (byte fallback) BPE");
  }
  KILN_CHECK(replace_space, "tokenizer", path,
             ": neither ByteLevel nor Metaspace nor Replace(\" \", \"\xE2\x96\x81\"): not a "
             "tokenizer kiln can run");

  const json& vocab = m.at("vocab");
  std::vector<tok::SentencePiece::Piece> pieces(size_t(max_vocab_id(vocab, path) + 1));
  for (auto& p : pieces) p.type = tok::SentencePiece::Type::unused;
  std::string unk =
      m.value("unk_token", json()).is_string() ? m["unk_token"].get<std::string>() : "";
  std::vector<bool> is_special(pieces.size(), false);
  if (j.contains("added_tokens"))
    for (size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& a = j["added_tokens"][i];
      auto id = size_t(token_id(a.at("id"), str("added_tokens[", i, "].id"), path));
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
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = merge_pair(merges[i], i, path);
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    KILN_CHECK(ia != vocab.end() && ib != vocab.end() && iab != vocab.end(), "tokenizer", path,
               ": model.merges[", i, "] '", a, " ", b,
               "' uses or makes a token not in model.vocab");
    pair_rank.emplace(uint64_t(ia->get<uint32_t>()) << 32 | ib->get<uint32_t>(), int32_t(i));
  }
  Tokenizer::Impl impl;
  impl.sp.emplace(std::move(pieces), prefix, /*remove_extra_whitespaces=*/false,
                  m.value("byte_fallback", false));
  impl.sp->set_prefix_first_only(first_only);
  impl.sp->set_merges(std::move(pair_rank));
  read_added_tokens(j, path, impl);
  return impl;
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
    std::string type = m.value("type", "BPE");
    KILN_CHECK(type == "BPE", "tokenizer", path, ": model.type is '", type,
               "': only BPE models are supported");
    if (!mentions_byte_level(j.value("pre_tokenizer", json())) &&
        !mentions_byte_level(j.value("decoder", json())))
      return load_hf_sentencepiece(path, j);
    KILN_CHECK(j.value("normalizer", json()).is_null(), "tokenizer", path, ": has a normalizer (",
               j["normalizer"].value("type", "?"),
               "): only byte-level BPE without a normalizer is supported");

    // Vocabulary: spelled token -> id.
    const json& vocab = m.at("vocab");
    std::vector<std::string> tokens(size_t(max_vocab_id(vocab, path) + 1));
    std::string bytes;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
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

    PreConfig pre;
    parse_pre(path, j.value("pre_tokenizer", json()), "pre_tokenizer", pre);
    impl.pre = tok::PreTokenizer(pre.pattern, pre.regex);
    impl.add_prefix_space = pre.add_prefix_space;

    read_added_tokens(j, path, impl);
    return impl;
  } catch (const json::exception& e) {
    fail("tokenizer", path, ": ", json_error_reason(e));
  }
}

std::string to_hf_json(const Tokenizer::Impl& impl) {
  KILN_CHECK(!impl.sp, "tokenizer",
             "saving a SentencePiece model as tokenizer.json is not supported: keep its .model");
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ordered_json added = ordered_json::array();
  for (const auto& a : impl.added)
    added.push_back({{"id", a.id},
                     {"content", a.text},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", a.special}});
  j["added_tokens"] = added;
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

  ordered_json vocab = ordered_json::object();
  const auto& tokens = impl.bpe.tokens();
  std::vector<std::string> spelled(tokens.size());
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (tokens[id].empty()) continue;
    spelled[id] = tok::bytes_to_unicode(tokens[id]);
    vocab[spelled[id]] = id;
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [l, r, m] : impl.bpe.merges_by_rank())
    merges.push_back(spelled[size_t(l)] + " " + spelled[size_t(r)]);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", impl.bpe.ignore_merges()},
                {"vocab", vocab},
                {"merges", merges}};
  return j.dump(2) + "\n";
}

}  // namespace kiln

// Hugging Face tokenizer.json for byte-level BPE models: load and save. Supported: model BPE
// (vocab, merges as "a b" or ["a", "b"], ignore_merges), pre_tokenizer ByteLevel (GPT-2),
// Split + ByteLevel (Llama 3) or null, decoder ByteLevel, added_tokens. Anything else is an
// error naming the key, rather than a tokenizer that silently encodes differently.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/tokenizer/byte_unicode.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

namespace {

using nlohmann::json;
using nlohmann::ordered_json;

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

}  // namespace

Tokenizer::Impl load_hf_json(const std::string& path, const std::string& content) {
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
    KILN_CHECK(j.value("normalizer", json()).is_null(), "tokenizer", path, ": has a normalizer (",
               j["normalizer"].value("type", "?"),
               "): only byte-level BPE without a normalizer is supported");
    KILN_CHECK(mentions_byte_level(j.value("pre_tokenizer", json())) ||
                   mentions_byte_level(j.value("decoder", json())),
               "tokenizer", path,
               ": neither pre_tokenizer nor decoder is ByteLevel: only byte-level BPE "
               "tokenizer.json files are supported (load a SentencePiece model from its .model)");

    // Vocabulary: spelled token -> id.
    const json& vocab = m.at("vocab");
    KILN_CHECK(vocab.is_object(), "tokenizer", path, ": model.vocab is not an object");
    int32_t max_id = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      KILN_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                     it.value().get<int64_t>() < (int64_t(1) << 30),
                 "tokenizer", path, ": model.vocab['", it.key(), "'] = ", it.value().dump(),
                 " is not a valid id");
      max_id = std::max(max_id, it.value().get<int32_t>());
    }
    std::vector<std::string> tokens(size_t(max_id + 1));
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
      std::string a, b;
      const json& e = merges[i];
      if (e.is_string()) {
        auto s = e.get<std::string>();
        size_t sp = s.find(' ');
        KILN_CHECK(sp != std::string::npos, "tokenizer", path, ": model.merges[", i, "] '", s,
                   "' is not two tokens separated by a space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        KILN_CHECK(e.is_array() && e.size() == 2, "tokenizer", path, ": model.merges[", i,
                   "] is neither \"a b\" nor [\"a\", \"b\"]");
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      }
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

    if (j.contains("added_tokens"))
      for (const json& a : j["added_tokens"])
        impl.added.push_back({a.at("content").get<std::string>(), a.at("id").get<int32_t>(),
                              a.value("special", false)});
    if (auto eos = config_eos(path))
      for (const auto& a : impl.added)
        if (a.text == *eos) impl.eos = a.id;
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

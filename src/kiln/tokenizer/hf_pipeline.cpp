#include "kiln/tokenizer/hf_pipeline.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln {

namespace {

using nlohmann::json;
constexpr const char* kSpace = "\xE2\x96\x81";  // "▁"

// Where a component sits in the file, for messages: "pre_tokenizer.pretokenizers[1]".
struct Where {
  const std::string& path;  // the file
  std::string key;
  Where at(const std::string& k) const { return {path, key + "." + k}; }
  Where at(size_t i) const { return {path, key + "[" + std::to_string(i) + "]"}; }
};

[[noreturn]] void unsupported(const Where& w, const json& c, const char* kinds) {
  fail("tokenizer", w.path, ": ", w.key, ".type = ", c.value("type", json("?")).dump(),
       " is not supported here (kiln runs ", kinds,
       "): convert the file to supported components, or open an issue with the file");
}

const json& need(const Where& w, const json& obj, const char* key) {
  KILN_CHECK(obj.is_object() && obj.contains(key), "tokenizer", w.path, ": ", w.key, " has no \"",
             key, "\": the file is malformed or truncated; re-export it");
  return obj[key];
}
std::string need_string(const Where& w, const json& obj, const char* key) {
  const json& v = need(w, obj, key);
  KILN_CHECK(v.is_string(), "tokenizer", w.path, ": ", w.key, ".", key, " = ", v.dump(),
             " is not a string");
  return v.get<std::string>();
}
const json& need_array(const Where& w, const json& obj, const char* key) {
  const json& v = need(w, obj, key);
  KILN_CHECK(v.is_array(), "tokenizer", w.path, ": ", w.key, ".", key, " is not a list");
  return v;
}
bool flag(const json& obj, const char* key, bool dflt) {
  return obj.contains(key) && obj[key].is_boolean() ? obj[key].get<bool>() : dflt;
}
std::string type_of(const Where& w, const json& c) {
  KILN_CHECK(c.is_object(), "tokenizer", w.path, ": ", w.key, " = ", c.dump().substr(0, 80),
             " is not an object with a \"type\"");
  return need_string(w, c, "type");
}

std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}/-").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// A Split's pattern as a regex: {"Regex": ...} as is, {"String": ...} escaped.
std::string split_regex(const Where& w, const json& c) {
  const json& p = need(w, c, "pattern");
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
    return p["Regex"].get<std::string>();
  if (p.is_object() && p.contains("String") && p["String"].is_string())
    return regex_escape(p["String"].get<std::string>());
  fail("tokenizer", w.path, ": ", w.key, ".pattern = ", p.dump().substr(0, 80),
       " has neither \"Regex\" nor \"String\"");
}

tok::SplitBehavior behavior(const Where& w, const json& c, const char* dflt) {
  std::string b = c.contains("behavior") ? need_string(w, c, "behavior") : dflt;
  if (b == "Removed") return tok::SplitBehavior::removed;
  if (b == "Isolated") return tok::SplitBehavior::isolated;
  if (b == "MergedWithPrevious") return tok::SplitBehavior::merged_with_previous;
  if (b == "MergedWithNext") return tok::SplitBehavior::merged_with_next;
  if (b == "Contiguous") return tok::SplitBehavior::contiguous;
  fail("tokenizer", w.path, ": ", w.key, ".behavior = \"", b,
       "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous");
}

tok::PreTokenizer split_step(const std::string& regex, tok::SplitBehavior b, bool invert) {
  tok::PreTokenizer p(tok::Pattern::custom, regex);
  p.set_behavior(b, invert);
  return p;
}

void read_normalizer(const Where& w, const json& c, tok::Normalizer& out) {
  if (c.is_null()) return;
  const std::string t = type_of(w, c);
  tok::NormalizerStep s;
  using K = tok::NormalizerStep::Kind;
  if (t == "Sequence") {
    const json& list = need_array(w, c, "normalizers");
    for (size_t i = 0; i < list.size(); ++i)
      read_normalizer(w.at("normalizers").at(i), list[i], out);
    return;
  }
  if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
    s.form = t == "NFC"    ? tok::UnicodeForm::nfc
             : t == "NFD"  ? tok::UnicodeForm::nfd
             : t == "NFKC" ? tok::UnicodeForm::nfkc
                           : tok::UnicodeForm::nfkd;
  } else if (t == "Lowercase") {
    s.kind = K::lowercase;
  } else if (t == "Prepend") {
    s.kind = K::prepend;
    s.to = need_string(w, c, "prepend");
  } else if (t == "Strip") {
    s.kind = K::strip;
    s.left = flag(c, "strip_left", true);
    s.right = flag(c, "strip_right", true);
  } else if (t == "Replace") {
    s.kind = K::replace;
    const json& p = need(w, c, "pattern");
    if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
      auto re =
          std::make_shared<tok::PreTokenizer>(tok::Pattern::custom, p["Regex"].get<std::string>());
      re->set_behavior(tok::SplitBehavior::removed, /*invert=*/true);  // the matches alone
      s.regex = std::move(re);
    } else {
      KILN_CHECK(p.is_object() && p.contains("String") && p["String"].is_string() &&
                     !p["String"].get<std::string>().empty(),
                 "tokenizer", w.path, ": ", w.key, ".pattern = ", p.dump().substr(0, 80),
                 " is neither {\"Regex\": ...} nor a non-empty {\"String\": ...}");
      s.from = p["String"].get<std::string>();
    }
    s.to = need_string(w, c, "content");
  } else {
    unsupported(w, c, "NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip, Sequence");
  }
  out.add(std::move(s));
}

// The pre-tokenizer as split steps; ByteLevel's prefix and Metaspace's replacement go into impl
// (they may only come first: they change the text, which kiln does once per stretch).
void read_pre(const Where& w, const json& c, std::vector<tok::PreTokenizer>& steps,
              Tokenizer::Impl& impl) {
  if (c.is_null()) return;
  const std::string t = type_of(w, c);
  auto must_be_first = [&](const char* what) {
    KILN_CHECK(steps.empty(), "tokenizer", w.path, ": ", w.key, " is ", what,
               " after a split: kiln runs it only as the first pre-tokenizer; move it first");
  };
  if (t == "Sequence") {
    const json& list = need_array(w, c, "pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      read_pre(w.at("pretokenizers").at(i), list[i], steps, impl);
  } else if (t == "ByteLevel") {
    if (flag(c, "add_prefix_space", true)) {
      must_be_first("ByteLevel with add_prefix_space");
      impl.add_prefix_space = true;
    }
    if (flag(c, "use_regex", true)) steps.emplace_back(tok::Pattern::gpt2);
  } else if (t == "Split") {
    steps.push_back(
        split_step(split_regex(w, c), behavior(w, c, "Isolated"), flag(c, "invert", false)));
  } else if (t == "Metaspace") {
    must_be_first("Metaspace");
    KILN_CHECK(c.value("replacement", json(kSpace)) == json(kSpace), "tokenizer", w.path, ": ",
               w.key, ".replacement = ", c.value("replacement", json()).dump(),
               " is not supported (only \"\xE2\x96\x81\")");
    std::string scheme = c.contains("prepend_scheme")        ? need_string(w, c, "prepend_scheme")
                         : flag(c, "add_prefix_space", true) ? "always"
                                                             : "never";
    tok::NormalizerStep s;
    s.kind = tok::NormalizerStep::Kind::metaspace;
    s.to = scheme == "never" ? "" : kSpace;
    s.first_only = scheme == "first";
    impl.normalizer.add(std::move(s));
    if (flag(c, "split", true))
      steps.push_back(split_step(kSpace, tok::SplitBehavior::merged_with_next, false));
  } else if (t == "Digits") {
    steps.push_back(split_step(flag(c, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                               tok::SplitBehavior::isolated, false));
  } else if (t == "Punctuation") {
    steps.push_back(split_step(R"([\p{P}!-/:-@\[-`{-~])", behavior(w, c, "Isolated"), false));
  } else if (t == "Whitespace") {
    steps.push_back(split_step(R"(\w+|[^\w\s]+)", tok::SplitBehavior::removed, true));
  } else if (t == "WhitespaceSplit") {
    steps.push_back(split_step(R"(\s+)", tok::SplitBehavior::removed, false));
  } else {
    unsupported(w, c,
                "ByteLevel, Split, Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit, "
                "Sequence");
  }
}

int32_t special_token_id(const Where& w, const json& c) {
  KILN_CHECK(c.is_array() && c.size() == 2 && c[1].is_number_integer() && c[1].get<int64_t>() >= 0,
             "tokenizer", w.path, ": ", w.key, " = ", c.dump().substr(0, 80),
             " is not [\"token\", id]");
  return c[1].get<int32_t>();
}

void read_post(const Where& w, const json& c, Tokenizer::Impl& impl) {
  if (c.is_null()) return;
  const std::string t = type_of(w, c);
  if (t == "Sequence") {
    const json& list = need_array(w, c, "processors");
    for (size_t i = 0; i < list.size(); ++i) read_post(w.at("processors").at(i), list[i], impl);
  } else if (t == "ByteLevel") {
    // Offsets only: the ids stay as they are.
  } else if (t == "BertProcessing" || t == "RobertaProcessing") {
    impl.post_prefix.push_back(special_token_id(w.at("cls"), need(w, c, "cls")));
    impl.post_suffix.insert(impl.post_suffix.begin(),
                            special_token_id(w.at("sep"), need(w, c, "sep")));
  } else if (t == "TemplateProcessing") {
    const json& single = need_array(w, c, "single");
    const json& specials = need(w, c, "special_tokens");
    bool after = false;
    std::vector<int32_t> pre, post;
    for (size_t i = 0; i < single.size(); ++i) {
      const Where wi = w.at("single").at(i);
      const json& item = single[i];
      if (item.contains("Sequence")) {
        after = true;
        continue;
      }
      const std::string name =
          need_string(wi.at("SpecialToken"), need(wi, item, "SpecialToken"), "id");
      KILN_CHECK(specials.contains(name), "tokenizer", w.path, ": ", wi.key,
                 " names special token '", name, "', which ", w.key, ".special_tokens lacks");
      const Where ws = w.at("special_tokens").at(name);
      for (const json& id : need_array(ws, specials[name], "ids")) {
        KILN_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, "tokenizer", w.path, ": ",
                   ws.key, ".ids has ", id.dump(), ", not an id");
        (after ? post : pre).push_back(id.get<int32_t>());
      }
    }
    impl.post_prefix.insert(impl.post_prefix.end(), pre.begin(), pre.end());
    impl.post_suffix.insert(impl.post_suffix.begin(), post.begin(), post.end());
  } else {
    unsupported(w, c, "TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence");
  }
}

// Per-token decoders of a character-level model, applied to `text` (one token's).
struct CharDecoder {
  std::vector<std::pair<std::string, std::string>> replace;  // in order
  bool byte_fallback = false;
};

void read_decoder(const Where& w, const json& c, bool byte_level, CharDecoder& d,
                  Tokenizer::Impl& impl) {
  if (c.is_null()) return;
  const std::string t = type_of(w, c);
  if (t == "Sequence") {
    const json& list = need_array(w, c, "decoders");
    for (size_t i = 0; i < list.size(); ++i)
      read_decoder(w.at("decoders").at(i), list[i], byte_level, d, impl);
  } else if (byte_level) {
    if (t != "ByteLevel") unsupported(w, c, "ByteLevel for a byte-level BPE");
  } else if (t == "Replace") {
    const json& p = need(w, c, "pattern");
    KILN_CHECK(p.is_object() && p.contains("String") && p["String"].is_string(), "tokenizer",
               w.path, ": ", w.key, ".pattern is not a {\"String\": ...}");
    d.replace.emplace_back(p["String"].get<std::string>(), need_string(w, c, "content"));
  } else if (t == "ByteFallback") {
    d.byte_fallback = true;
  } else if (t == "Fuse") {
    // Tokens are concatenated anyway.
  } else if (t == "Strip") {
    KILN_CHECK(need_string(w, c, "content") == " " && c.value("stop", 0) == 0, "tokenizer", w.path,
               ": ", w.key, " strips other than leading spaces: not supported");
    impl.decode_strip = c.value("start", size_t(0));
  } else if (t == "Metaspace") {
    d.replace.emplace_back(kSpace, " ");
    std::string scheme =
        c.value("prepend_scheme", flag(c, "add_prefix_space", true) ? "always" : "never");
    if (scheme != "never") impl.decode_strip = 1;
  } else {
    unsupported(w, c,
                "Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence for a byte-fallback BPE");
  }
}

// "<0x0A>" -> 10; -1 if not a byte token.
int byte_token(std::string_view p) {
  if (p.size() != 6 || !p.starts_with("<0x") || p[5] != '>') return -1;
  auto hex = [](char ch) {
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
  };
  int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

}  // namespace

void read_hf_pipeline(const std::string& path, const json& j, bool byte_level,
                      Tokenizer::Impl& impl) {
  const json none;
  auto get = [&](const char* key) -> const json& { return j.contains(key) ? j[key] : none; };
  read_normalizer({path, "normalizer"}, get("normalizer"), impl.normalizer);
  std::vector<tok::PreTokenizer> steps;
  read_pre({path, "pre_tokenizer"}, get("pre_tokenizer"), steps, impl);
  if (!steps.empty()) {
    impl.pre = std::move(steps[0]);
    impl.pre_rest.assign(std::make_move_iterator(steps.begin() + 1),
                         std::make_move_iterator(steps.end()));
  }
  read_post({path, "post_processor"}, get("post_processor"), impl);
  size_t n = impl.sp ? impl.sp->pieces().size() : size_t(impl.bpe.size());
  for (const auto& a : impl.added) n = std::max(n, size_t(a.id) + 1);
  for (const auto* ids : {&impl.post_prefix, &impl.post_suffix})
    for (int32_t id : *ids)
      KILN_CHECK(size_t(id) < n, "tokenizer", path, ": post_processor names id ", id,
                 ", which is not in the vocabulary (size ", n,
                 "): fix post_processor's special_tokens");
  CharDecoder d;
  read_decoder({path, "decoder"}, get("decoder"), byte_level, d, impl);
  if (!byte_level && impl.sp) {
    // Every token goes through the decoders, added ones too (as in Transformers.js and
    // Hugging Face): Gemma's added "▁▁▁" decodes to spaces.
    auto decode = [&](std::string t) {
      for (const auto& [from, to] : d.replace) t = replace_all(std::move(t), from, to);
      const int b = d.byte_fallback ? byte_token(t) : -1;
      return b >= 0 ? std::string(1, char(b)) : t;
    };
    const auto& pieces = impl.sp->pieces();
    impl.decoded.resize(pieces.size());
    for (size_t id = 0; id < pieces.size(); ++id) impl.decoded[id] = decode(pieces[id].text);
    for (const auto& a : impl.added) {
      if (size_t(a.id) >= impl.decoded.size()) impl.decoded.resize(size_t(a.id) + 1);
      impl.decoded[size_t(a.id)] = decode(a.text);
    }
  }
  impl.pipeline.normalizer = get("normalizer").dump();
  impl.pipeline.pre_tokenizer = get("pre_tokenizer").dump();
  impl.pipeline.post_processor = get("post_processor").dump();
  impl.pipeline.decoder = get("decoder").dump();
}

std::string describe_component(const json& c) {
  if (c.is_null()) return "none";
  if (!c.is_object()) return c.dump();
  std::string out = c.value("type", "?");
  std::string args;
  for (auto it = c.begin(); it != c.end(); ++it) {
    const json& v = it.value();
    if (it.key() == "type" || it.key() == "pair" || it.key() == "special_tokens") continue;
    std::string a;
    if (it.key() == "single" && v.is_array()) {  // TemplateProcessing: "<bos> $A"
      for (const json& x : v) {
        const json& item = x.contains("Sequence") ? x["Sequence"] : x.value("SpecialToken", json());
        a += std::string(a.empty() ? "" : " ") + (x.contains("Sequence") ? "$" : "") +
             item.value("id", "?");
      }
      args += (args.empty() ? "" : ", ") + ("single=\"" + a + "\"");
      continue;
    }
    if (v.is_array() && !v.empty() && v[0].is_object() && v[0].contains("type")) {
      for (const json& x : v) a += (a.empty() ? "" : ", ") + describe_component(x);
      out += "[" + a + "]";
      continue;
    }
    if (v.is_object() && (v.contains("Regex") || v.contains("String"))) {
      a = it.key() + "=" + v.begin().value().dump();
    } else if (v.is_primitive() && !v.is_null()) {
      a = it.key() + "=" + v.dump();
    } else {
      continue;
    }
    args += (args.empty() ? "" : ", ") + a;
  }
  return args.empty() ? out : out + "(" + args + ")";
}

std::string describe_pipeline(const Tokenizer::Impl& m) {
  const char* arrow = " \xE2\x86\x92 ";  // " → "
  const int64_t vocab = m.sp ? int64_t(m.sp->pieces().size()) : int64_t(m.bpe.size());
  const int64_t merges = m.sp ? int64_t(m.sp->num_merges()) : int64_t(m.bpe.num_merges());
  if (m.pipeline.model_options.empty()) {
    if (m.sp)
      return str("SentencePiece normalizer (dummy prefix ", m.sp->add_dummy_prefix(), ")", arrow,
                 "none", arrow, "SentencePiece BPE(vocab=", vocab,
                 ", byte_fallback=", m.sp->byte_fallback(), ")", arrow, "none", arrow,
                 "SentencePiece");
    return str("none", arrow, "Split(", pattern_name(m.pre.pattern()), ")", arrow,
               "BPE(byte-level, vocab=", vocab, ", merges=", merges, ")", arrow, "none", arrow,
               "ByteLevel");
  }
  json model = json::parse(m.pipeline.model_options);
  model["vocab"] = vocab;
  model["merges"] = merges;
  return str(describe_component(json::parse(m.pipeline.normalizer)), arrow,
             describe_component(json::parse(m.pipeline.pre_tokenizer)), arrow,
             describe_component(model), arrow,
             describe_component(json::parse(m.pipeline.post_processor)), arrow,
             describe_component(json::parse(m.pipeline.decoder)));
}

}  // namespace kiln

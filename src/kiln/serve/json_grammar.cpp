#include "kiln/serve/json_grammar.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"

namespace kiln::serve {

using json = nlohmann::json;
using Kind = JsonSchema::Kind;

namespace {

enum FrameKind : uint8_t { kObj = 1, kArr, kStr, kNum, kLit };
// Object states: '{' next, after '{', key open, ':' next, after ':', value open, after value,
// after ','. Arrays: '[' next, after '[', value open, after value, after ','.
enum ObjSt : uint8_t { oFresh, oOpen, oKey, oColon, oAfterColon, oValue, oNext, oComma };
enum ArrSt : uint8_t { aFresh, aOpen, aValue, aNext, aComma };
enum StrSt : uint8_t { sFresh, sNormal, sEsc, sUtf8, sHex };
enum NumSt : uint8_t { nFresh, nMinus, nZero, nInt, nFrac0, nFrac, nExp0, nExpSign, nExp };

bool is_digit(uint8_t c) {
  return c >= '0' && c <= '9';
}
bool is_hex(uint8_t c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

// ---- compiling a schema ----

JsonSchema::JsonSchema() {
  auto add = [&](Node n) {
    nodes_.push_back(std::move(n));
    return int(nodes_.size()) - 1;
  };
  any_ = add({});
  Node o;
  o.kind = Kind::object;
  o.free = true;
  o.next_required = {0};
  obj_ = add(o);
  Node a;
  a.kind = Kind::array;
  a.items = any_;
  arr_ = add(a);
  Node s;
  s.kind = Kind::string;
  str_ = add(s);
  Node n;
  n.kind = Kind::number;
  num_ = add(n);
  Node l;
  l.kind = Kind::literal;
  l.literals = {"true", "false", "null"};
  tfn_ = add(l);
}

struct SchemaCompiler {
  using json = nlohmann::ordered_json;  // keeps "properties" in the schema's order
  JsonSchema& s;

  int add(JsonSchema::Node n) {
    s.nodes_.push_back(std::move(n));
    return int(s.nodes_.size()) - 1;
  }

  static int count(const json& j, const char* key, const std::string& path) {
    const json& v = j[key];
    KILN_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX,
               "json_schema", path, ".", key, " must be a non-negative integer, got ", v.dump());
    return int(v.get<int64_t>());
  }

  int literals(std::vector<std::string> lits) {
    JsonSchema::Node n;
    n.kind = Kind::literal;
    n.literals = std::move(lits);
    return add(std::move(n));
  }

  int compile(const json& j, const std::string& path, int depth) {
    KILN_CHECK(depth < JsonGrammar::kMaxDepth - 8, "json_schema", path,
               ": the schema nests deeper than ", JsonGrammar::kMaxDepth - 8, " levels");
    if (j.is_boolean() && j.get<bool>()) return s.any_;
    KILN_CHECK(j.is_object(), "json_schema", path, " must be a schema object, got ", j.dump());
    for (const char* k : {"$ref",
                          "anyOf",
                          "oneOf",
                          "allOf",
                          "not",
                          "if",
                          "pattern",
                          "format",
                          "patternProperties",
                          "minimum",
                          "maximum",
                          "exclusiveMinimum",
                          "exclusiveMaximum",
                          "multipleOf",
                          "uniqueItems",
                          "prefixItems",
                          "minProperties",
                          "maxProperties",
                          "dependentRequired",
                          "contains"})
      KILN_CHECK(!j.contains(k), "json_schema", path, ": the keyword '", k,
                 "' is not supported (supported: type, properties, required, items, minItems, "
                 "maxItems, minLength, maxLength, enum, const)");
    if (j.contains("const")) return literals({j["const"].dump()});
    if (j.contains("enum")) {
      const json& e = j["enum"];
      KILN_CHECK(e.is_array() && !e.empty(), "json_schema", path,
                 ".enum must be a non-empty list, got ", e.dump());
      std::vector<std::string> lits;
      for (const json& v : e) lits.push_back(v.dump());
      return literals(std::move(lits));
    }
    std::string type;
    if (j.contains("type")) {
      KILN_CHECK(j["type"].is_string(), "json_schema", path,
                 ".type must be one type name (lists of types are not supported), got ",
                 j["type"].dump());
      type = j["type"].get<std::string>();
    } else if (j.contains("properties")) {
      type = "object";
    } else if (j.contains("items")) {
      type = "array";
    } else {
      return s.any_;
    }
    JsonSchema::Node n;
    if (type == "object") {
      n.kind = Kind::object;
      const json props = j.value("properties", json::object());
      KILN_CHECK(props.is_object(), "json_schema", path, ".properties must be an object");
      std::vector<std::string> names;
      for (auto it = props.begin(); it != props.end(); ++it) {
        names.push_back(it.key());
        n.keys.push_back(json(it.key()).dump());
        n.values.push_back(compile(it.value(), path + ".properties." + it.key(), depth + 1));
      }
      std::vector<bool> req(names.size(), false);
      if (j.contains("required")) {
        KILN_CHECK(j["required"].is_array(), "json_schema", path, ".required must be a list");
        for (const json& r : j["required"]) {
          auto at = r.is_string() ? std::find(names.begin(), names.end(), r.get<std::string>())
                                  : names.end();
          KILN_CHECK(at != names.end(), "json_schema", path, ".required names ", r.dump(),
                     ", which is not one of the properties");
          req[size_t(at - names.begin())] = true;
        }
      }
      n.next_required.assign(names.size() + 1, int(names.size()));
      for (int i = int(names.size()) - 1; i >= 0; --i)
        n.next_required[size_t(i)] = req[size_t(i)] ? i : n.next_required[size_t(i) + 1];
      const bool closed = j.contains("additionalProperties") &&
                          j["additionalProperties"].is_boolean() &&
                          !j["additionalProperties"].get<bool>();
      if (names.empty() && !closed) return s.obj_;
    } else if (type == "array") {
      n.kind = Kind::array;
      n.items = j.contains("items") ? compile(j["items"], path + ".items", depth + 1) : s.any_;
      if (j.contains("minItems")) n.min_items = count(j, "minItems", path);
      if (j.contains("maxItems")) n.max_items = count(j, "maxItems", path);
      KILN_CHECK(n.min_items <= n.max_items, "json_schema", path, ": minItems ", n.min_items,
                 " exceeds maxItems ", n.max_items);
    } else if (type == "string") {
      n.kind = Kind::string;
      if (j.contains("minLength")) n.min_len = count(j, "minLength", path);
      if (j.contains("maxLength")) n.max_len = count(j, "maxLength", path);
      KILN_CHECK(n.min_len <= n.max_len, "json_schema", path, ": minLength ", n.min_len,
                 " exceeds maxLength ", n.max_len);
    } else if (type == "number" || type == "integer") {
      n.kind = type == "number" ? Kind::number : Kind::integer;
    } else if (type == "boolean") {
      return literals({"true", "false"});
    } else if (type == "null") {
      return literals({"null"});
    } else {
      fail("json_schema", path, ".type '", type,
           "' is not one of object, array, string, number, integer, boolean, null");
    }
    return add(std::move(n));
  }
};

std::shared_ptr<const JsonSchema> JsonSchema::any_object() {
  auto s = std::shared_ptr<JsonSchema>(new JsonSchema());
  s->root_ = s->obj_;
  return s;
}

std::shared_ptr<const JsonSchema> JsonSchema::compile(std::string_view text) {
  // ordered_json keeps "properties" in the schema's order: the order the output follows.
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, false);
  KILN_CHECK(!j.is_discarded(), "json_schema", "the schema is not valid JSON");
  auto s = std::shared_ptr<JsonSchema>(new JsonSchema());
  SchemaCompiler c{*s};
  s->root_ = c.compile(j, "schema", 0);
  return s;
}

// ---- the automaton ----

JsonGrammar::JsonGrammar(std::shared_ptr<const JsonSchema> schema)
    : schema_(std::move(schema)), s_(schema_.get()) {}

bool JsonGrammar::feed(char c) {
  JsonGrammar g = *this;
  if (!g.step(uint8_t(c))) return false;
  *this = g;
  return true;
}

bool JsonGrammar::feed(std::string_view bytes) {
  JsonGrammar g = *this;
  for (char c : bytes)
    if (!g.step(uint8_t(c))) return false;
  *this = g;
  return true;
}

bool JsonGrammar::can_end() const {
  return finished() || (started_ && depth_ == 1 && frame_can_end(stack_[0]));
}

std::string JsonGrammar::key() const {
  std::string k(1, char(started_));
  k.append(reinterpret_cast<const char*>(stack_), size_t(depth_) * sizeof(Frame));
  return k;
}

bool JsonGrammar::lit_viable(const Frame& f, size_t i) const {
  const JsonSchema::Node& n = s_->node(f.node);
  const auto& lits = f.pad ? n.keys : n.literals;
  const std::string& ref = lits[size_t(f.a)];
  return lits[i].size() >= size_t(f.b) && lits[i].compare(0, size_t(f.b), ref, 0, size_t(f.b)) == 0;
}

bool JsonGrammar::frame_can_end(const Frame& f) const {
  if (f.kind == kNum) return f.st == nZero || f.st == nInt || f.st == nFrac || f.st == nExp;
  if (f.kind == kLit) {
    const JsonSchema::Node& n = s_->node(f.node);
    const auto& lits = f.pad ? n.keys : n.literals;
    for (int i = f.c; i <= f.d; ++i)
      if (lit_viable(f, size_t(i)) && lits[size_t(i)].size() == size_t(f.b) && f.b > 0) return true;
  }
  return false;
}

bool JsonGrammar::push_value(int node, uint8_t c) {
  if (depth_ == kMaxDepth) return false;
  const JsonSchema::Node* n = &s_->node(node);
  if (n->kind == Kind::any) {  // the first byte picks the type
    node = c == '{'                           ? s_->obj()
           : c == '['                         ? s_->arr()
           : c == '"'                         ? s_->str()
           : c == '-' || is_digit(c)          ? s_->num()
           : c == 't' || c == 'f' || c == 'n' ? s_->tfn()
                                              : -1;
    if (node < 0) return false;
    n = &s_->node(node);
  }
  Frame f;
  f.node = node;
  switch (n->kind) {
    case Kind::object:
      f.kind = kObj;
      break;
    case Kind::array:
      f.kind = kArr;
      break;
    case Kind::string:
      f.kind = kStr;
      break;
    case Kind::number:
    case Kind::integer:
      f.kind = kNum;
      break;
    case Kind::literal:
      f.kind = kLit;
      f.c = 0;
      f.d = int(n->literals.size()) - 1;
      break;
    case Kind::any:
      return false;
  }
  stack_[depth_++] = f;
  return true;
}

void JsonGrammar::child_done(Frame& p, const Frame& child) {
  p.ws = 0;
  if (p.kind == kObj) {
    if (p.st == oKey) {
      if (!s_->node(p.node).free) p.a = child.a;  // the property the key named
      p.st = oColon;
    } else {
      p.st = oNext;
    }
  } else {  // kArr
    ++p.a;
    p.st = aNext;
  }
}

// Whitespace between tokens, at most kMaxWs in a row (so the states stay finite).
bool JsonGrammar::take_ws(Frame& f, uint8_t c) {
  if ((c == ' ' || c == '\n') && f.ws < kMaxWs) {
    ++f.ws;
    return true;
  }
  return false;
}

JsonGrammar::Step JsonGrammar::consume(Frame& f, uint8_t c) {
  switch (f.kind) {
    case kObj:
      return consume_object(f, c);
    case kArr:
      return consume_array(f, c);
    case kStr:
      return consume_string(f, c);
    case kNum:
      return consume_number(f, c);
    case kLit:
      return consume_literal(f, c);
  }
  return Step::reject;
}

JsonGrammar::Step JsonGrammar::consume_object(Frame& f, uint8_t c) {
  const JsonSchema::Node& n = s_->node(f.node);
  // Properties come in the schema's order; a key may skip optional ones, never a required.
  const int nkeys = int(n.keys.size());
  const bool close_ok = n.free || n.next_required[size_t(f.a + 1)] == nkeys;
  const bool more_ok = n.free || f.a + 1 < nkeys;
  switch (f.st) {
    case oFresh:
      if (c != '{') return Step::reject;
      f.st = oOpen;
      f.a = -1;
      return Step::consumed;
    case oOpen:
    case oComma:
      if (take_ws(f, c)) return Step::consumed;
      if (c == '}' && f.st == oOpen && close_ok) return Step::done;
      if (c != '"' || !more_ok || depth_ == kMaxDepth) return Step::reject;
      f.st = oKey;
      if (n.free) {
        push_value(s_->str(), c);
      } else {
        Frame k;
        k.node = f.node;
        k.kind = kLit;
        k.pad = 1;  // matches the node's keys
        k.a = f.a + 1;
        k.c = f.a + 1;
        k.d = std::min(n.next_required[size_t(f.a + 1)], nkeys - 1);
        stack_[depth_++] = k;
      }
      return Step::pass;  // feed c to the key
    case oColon:
      if (take_ws(f, c)) return Step::consumed;
      if (c != ':') return Step::reject;
      f.st = oAfterColon;
      f.ws = 0;
      return Step::consumed;
    case oAfterColon:
      if (take_ws(f, c)) return Step::consumed;
      if (!push_value(n.free ? s_->any() : n.values[size_t(f.a)], c)) return Step::reject;
      f.st = oValue;
      return Step::pass;
    case oNext:
      if (take_ws(f, c)) return Step::consumed;
      if (c == ',' && more_ok) {
        f.st = oComma;
        f.ws = 0;
        return Step::consumed;
      }
      if (c == '}' && close_ok) return Step::done;
      return Step::reject;
  }
  return Step::reject;
}

JsonGrammar::Step JsonGrammar::consume_array(Frame& f, uint8_t c) {
  const JsonSchema::Node& n = s_->node(f.node);
  switch (f.st) {
    case aFresh:
      if (c != '[') return Step::reject;
      f.st = aOpen;
      return Step::consumed;
    case aOpen:
    case aComma:
      if (take_ws(f, c)) return Step::consumed;
      if (c == ']' && f.st == aOpen && n.min_items == 0) return Step::done;
      if (f.a >= n.max_items || !push_value(n.items, c)) return Step::reject;
      f.st = aValue;
      return Step::pass;
    case aNext:
      if (take_ws(f, c)) return Step::consumed;
      if (c == ',' && f.a < n.max_items) {
        f.st = aComma;
        f.ws = 0;
        return Step::consumed;
      }
      if (c == ']' && f.a >= n.min_items) return Step::done;
      return Step::reject;
  }
  return Step::reject;
}

JsonGrammar::Step JsonGrammar::consume_string(Frame& f, uint8_t c) {
  const JsonSchema::Node& n = s_->node(f.node);
  switch (f.st) {
    case sFresh:
      if (c != '"') return Step::reject;
      f.st = sNormal;
      return Step::consumed;
    case sNormal:
      if (c == '"') return f.a >= n.min_len ? Step::done : Step::reject;
      if (f.a >= n.max_len || c < 0x20) return Step::reject;
      // Characters count at their first byte, only under a length bound: an unbounded
      // string stays one state (one cached mask).
      if (n.min_len > 0 || n.max_len < INT32_MAX) ++f.a;
      if (c == '\\') {
        f.st = sEsc;
      } else if (c >= 0x80) {  // UTF-8: the continuation bytes and the first one's range
        int more = 0, lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
          more = 1;
        else if (c == 0xE0)
          more = 2, lo = 0xA0;
        else if (c == 0xED)
          more = 2, hi = 0x9F;  // no surrogates
        else if (c >= 0xE1 && c <= 0xEF)
          more = 2;
        else if (c == 0xF0)
          more = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3)
          more = 3;
        else if (c == 0xF4)
          more = 3, hi = 0x8F;
        else
          return Step::reject;
        f.st = sUtf8;
        f.b = more;
        f.c = lo;
        f.d = hi;
      }
      return Step::consumed;
    case sUtf8:
      if (c < f.c || c > f.d) return Step::reject;
      f.c = 0x80;
      f.d = 0xBF;
      if (--f.b == 0) f.st = sNormal;
      return Step::consumed;
    case sEsc:
      if (c == 'u') {
        f.st = sHex;
        f.b = 4;
        return Step::consumed;
      }
      if (!std::strchr("\"\\/bfnrt", c) || c == 0) return Step::reject;
      f.st = sNormal;
      return Step::consumed;
    case sHex:
      // \uD800-\uDFFF (surrogates) are left out: a lone one is invalid JSON text.
      if (!is_hex(c) || (f.b == 4 && (c == 'd' || c == 'D'))) return Step::reject;
      if (--f.b == 0) f.st = sNormal;
      return Step::consumed;
  }
  return Step::reject;
}

JsonGrammar::Step JsonGrammar::consume_number(Frame& f, uint8_t c) {
  const JsonSchema::Node& n = s_->node(f.node);
  const bool frac_ok = n.kind == Kind::number;
  auto start_frac = [&] {
    if (frac_ok && c == '.') return f.st = nFrac0, f.a = 0, true;
    if (frac_ok && (c == 'e' || c == 'E')) return f.st = nExp0, f.a = 0, true;
    return false;
  };
  switch (f.st) {
    case nFresh:
    case nMinus:
      if (c == '-' && f.st == nFresh) return f.st = nMinus, Step::consumed;
      if (c == '0') return f.st = nZero, Step::consumed;
      if (is_digit(c)) return f.st = nInt, f.a = 1, Step::consumed;
      return Step::reject;
    case nZero:
      return start_frac() ? Step::consumed : Step::pass;
    case nInt:
    case nFrac:
      if (is_digit(c) && f.a < kMaxDigits) return ++f.a, Step::consumed;
      if (f.st == nInt && start_frac()) return Step::consumed;
      if (f.st == nFrac && frac_ok && (c == 'e' || c == 'E'))
        return f.st = nExp0, f.a = 0, Step::consumed;
      return Step::pass;
    case nFrac0:
      if (is_digit(c)) return f.st = nFrac, f.a = 1, Step::consumed;
      return Step::reject;
    case nExp0:
      if (c == '+' || c == '-') return f.st = nExpSign, Step::consumed;
      [[fallthrough]];
    case nExpSign:
      if (is_digit(c)) return f.st = nExp, f.a = 1, Step::consumed;
      return Step::reject;
    case nExp:
      if (is_digit(c) && f.a < 2) return ++f.a, Step::consumed;
      return Step::pass;
  }
  return Step::reject;
}

JsonGrammar::Step JsonGrammar::consume_literal(Frame& f, uint8_t c) {
  const JsonSchema::Node& n = s_->node(f.node);
  const auto& lits = f.pad ? n.keys : n.literals;
  for (int i = f.c; i <= f.d; ++i) {
    const std::string& l = lits[size_t(i)];
    if (l.size() > size_t(f.b) && uint8_t(l[size_t(f.b)]) == c && lit_viable(f, size_t(i))) {
      f.a = i;
      ++f.b;
      for (int j = f.c; j <= f.d; ++j)
        if (lits[size_t(j)].size() > size_t(f.b) && lit_viable(f, size_t(j))) return Step::consumed;
      return Step::done;
    }
  }
  return frame_can_end(f) ? Step::pass : Step::reject;
}

bool JsonGrammar::step(uint8_t c) {
  if (!started_) {
    started_ = true;
    if (!push_value(s_->root(), c)) return false;
  }
  if (depth_ == 0) return false;  // finished: nothing may follow
  // `pass` from a container: it opened a child for c; from a value: the value ended before c,
  // which goes to the parent.
  while (true) {
    const int top = depth_ - 1;
    Frame& f = stack_[top];
    const Step r = consume(f, c);
    if (r == Step::consumed) return true;
    if (r == Step::reject) return false;
    if (r == Step::pass && depth_ > top + 1) continue;  // a child was pushed: feed it c
    const Frame child = f;
    --depth_;
    if (depth_ == 0) return r == Step::done;
    child_done(stack_[depth_ - 1], child);
    if (r == Step::done) return true;
  }
}

// ---- the token mask ----

namespace {

std::vector<std::string> vocab_bytes(const Tokenizer& tok, int model_vocab) {
  std::vector<std::string> out(size_t(std::max(model_vocab, 0)));
  std::vector<bool> special(out.size(), false);
  for (const auto& [text, id] : tok.info().specials)
    if (id >= 0 && id < model_vocab) special[size_t(id)] = true;
  for (int32_t id = 0; id < std::min(model_vocab, tok.vocab_size()); ++id) {
    if (special[size_t(id)]) continue;
    try {
      out[size_t(id)] = tok.token_bytes(id);
    } catch (const Error&) {  // a hole in the vocabulary
    }
  }
  return out;
}

}  // namespace

VocabTrie::VocabTrie(const Tokenizer& tok, int model_vocab)
    : VocabTrie(vocab_bytes(tok, model_vocab),
                tok.eos_id() && *tok.eos_id() < model_vocab ? tok.eos_id() : std::nullopt) {}

VocabTrie::VocabTrie(std::vector<std::string> token_bytes, std::optional<int32_t> eos)
    : bytes_(std::move(token_bytes)), vocab_(int(bytes_.size())), eos_(eos) {
  nodes_.push_back({});
  for (int32_t id = 0; id < vocab_; ++id) {
    const std::string& b = bytes_[size_t(id)];
    if (b.empty()) continue;
    int at = 0;
    for (char ch : b) {
      int next = -1;
      for (const auto& [byte, kid] : nodes_[size_t(at)].kids)
        if (byte == uint8_t(ch)) next = kid;
      if (next < 0) {
        next = int(nodes_.size());
        nodes_[size_t(at)].kids.push_back({uint8_t(ch), next});
        nodes_.push_back({});
      }
      at = next;
    }
    nodes_[size_t(at)].tokens.push_back(id);
  }
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonSchema> schema,
                               std::shared_ptr<const VocabTrie> trie)
    : g_(std::move(schema)), trie_(std::move(trie)) {}

void JsonConstraint::walk(int node, const JsonGrammar& g, std::vector<uint64_t>& bits) const {
  for (const auto& [byte, kid] : trie_->nodes()[size_t(node)].kids) {
    JsonGrammar h = g;
    if (!h.step(byte)) continue;  // no token below this prefix fits
    for (int32_t t : trie_->nodes()[size_t(kid)].tokens) bits[size_t(t) / 64] |= 1ull << (t % 64);
    if (!trie_->nodes()[size_t(kid)].kids.empty()) walk(kid, h, bits);
  }
}

std::vector<uint64_t> JsonConstraint::allowed() const {
  std::vector<uint64_t> bits(size_t(trie_->vocab() + 63) / 64, 0);
  walk(0, g_, bits);
  if (g_.can_end() && trie_->eos())
    bits[size_t(*trie_->eos()) / 64] |= 1ull << (*trie_->eos() % 64);
  return bits;
}

bool JsonConstraint::mask(float* logits, int V) {
  std::string k = g_.key();
  auto it = cache_.find(k);
  if (it == cache_.end()) {
    if (cache_.size() >= kCacheStates) cache_.clear();
    ++walks_;
    it = cache_.emplace(std::move(k), allowed()).first;
  }
  const std::vector<uint64_t>& bits = it->second;
  bool any = false;
  for (int i = 0; i < V; ++i) {
    const bool ok = i < trie_->vocab() && (bits[size_t(i) / 64] >> (i % 64) & 1);
    if (!ok) logits[i] = -INFINITY;
    any |= ok;
  }
  return any;
}

void JsonConstraint::accept(int32_t token) {
  if (token < 0 || token >= trie_->vocab()) return;
  const bool ok = g_.feed(trie_->bytes(token));  // eos (no bytes) changes nothing
  KILN_DCHECK(ok);
  (void)ok;
}

ConstraintFactory json_constraint_factory(std::shared_ptr<const JsonSchema> schema,
                                          std::shared_ptr<const VocabTrie> trie) {
  return [schema = std::move(schema), trie = std::move(trie)] {
    return std::make_unique<JsonConstraint>(schema, trie);
  };
}

}  // namespace kiln::serve

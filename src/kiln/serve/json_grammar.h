// JSON-schema-constrained decoding (response_format): a schema compiled to a byte-level pushdown
// automaton (JsonGrammar: a stack of frames, one per open object/array/string/number/literal)
// that says which next bytes keep the output a prefix of a valid instance; and the token mask a
// sequence's sampling applies (JsonConstraint, an infer/logits_constraint.h), found by walking a
// trie of the vocabulary's byte strings once per step through copies of the state, cached per
// state. Supported schema subset: type object (properties in order, required; no others),
// array (items, minItems, maxItems), string (minLength, maxLength), number, integer, boolean,
// null, enum, const, nesting; no "type" = any value. Whitespace: at most kMaxWs bytes (space or
// newline) between tokens, none around the top value; numbers at most 15 digits per part, so
// generation is bounded by the schema and max_tokens.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/infer/logits_constraint.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln::serve {

// A compiled schema: immutable, shared by every sequence that follows it.
class JsonSchema {
 public:
  // {"type": "json_object"}: any JSON object.
  static std::shared_ptr<const JsonSchema> any_object();
  // A JSON schema given as JSON text. Throws Error naming the schema path and the keyword for
  // what is outside the subset.
  static std::shared_ptr<const JsonSchema> compile(std::string_view schema_json);

  enum class Kind : uint8_t { any, object, array, string, number, integer, literal };
  struct Node {
    Kind kind = Kind::any;
    // object: property names as JSON strings ("\"name\""), their schemas, and for each index
    // the first required property at or after it (size() = none); free = any keys and values.
    std::vector<std::string> keys;
    std::vector<int> values;
    std::vector<int> next_required;
    bool free = false;
    int items = 0;  // array: the items' schema
    int min_items = 0, max_items = INT32_MAX;
    int min_len = 0, max_len = INT32_MAX;  // string, in characters
    std::vector<std::string> literals;     // literal: each allowed value as compact JSON
  };
  const Node& node(int i) const { return nodes_[size_t(i)]; }
  int root() const { return root_; }
  // Built-in nodes for values of any type: a free object, array, string, number, and the
  // literals true/false/null.
  int obj() const { return obj_; }
  int arr() const { return arr_; }
  int str() const { return str_; }
  int num() const { return num_; }
  int tfn() const { return tfn_; }
  int any() const { return any_; }

 private:
  JsonSchema();
  std::vector<Node> nodes_;
  int root_ = 0, any_ = 0, obj_ = 0, arr_ = 0, str_ = 0, num_ = 0, tfn_ = 0;
  friend struct SchemaCompiler;
};

// Where the output stands in the schema's language. Cheap to copy (a fixed array of frames).
class JsonGrammar {
 public:
  static constexpr int kMaxDepth = 32;  // open containers + the value inside; deeper is refused
  static constexpr int kMaxWs = 2;
  static constexpr int kMaxDigits = 15;

  explicit JsonGrammar(std::shared_ptr<const JsonSchema> schema);
  // Advances over byte c if the output stays a valid prefix; else false and nothing changes.
  bool feed(char c);
  bool feed(std::string_view bytes);  // all or nothing
  // The output is a whole valid value (it may still go on, e.g. a top-level number).
  bool can_end() const;
  // The value is whole and nothing may follow.
  bool finished() const { return started_ && depth_ == 0; }
  // The state as bytes: equal states give equal keys (the masks cache).
  std::string key() const;

  struct Frame {
    int32_t node = 0;
    uint8_t kind = 0, st = 0, ws = 0, pad = 0;
    int32_t a = 0, b = 0, c = 0, d = 0;
  };

 private:
  enum class Step { consumed, done, pass, reject };
  bool step(uint8_t c);               // no rollback: callers step a copy
  Step consume(Frame& f, uint8_t c);  // one byte into the top frame, by the frame's kind
  Step consume_object(Frame& f, uint8_t c);
  Step consume_array(Frame& f, uint8_t c);
  Step consume_string(Frame& f, uint8_t c);
  Step consume_number(Frame& f, uint8_t c);
  Step consume_literal(Frame& f, uint8_t c);
  bool take_ws(Frame& f, uint8_t c);
  bool push_value(int node, uint8_t c);  // opens the value that starts with c, then feeds c
  void child_done(Frame& parent, const Frame& child);
  bool frame_can_end(const Frame& f) const;
  bool lit_viable(const Frame& f, size_t i) const;

  std::shared_ptr<const JsonSchema> schema_;
  const JsonSchema* s_ = nullptr;
  Frame stack_[kMaxDepth];
  int depth_ = 0;
  bool started_ = false;

  friend class JsonConstraint;
};

// The vocabulary's byte strings as a trie (special tokens left out), built once per model.
class VocabTrie {
 public:
  // Ids from model_vocab on (padding rows) and special tokens other than eos are never allowed.
  VocabTrie(const Tokenizer& tok, int model_vocab);
  // Each id's bytes ("" = never allowed), and the id that may end the output.
  VocabTrie(std::vector<std::string> token_bytes, std::optional<int32_t> eos);
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> kids;  // (byte, node)
    std::vector<int32_t> tokens;                    // tokens whose bytes end here
  };
  const std::vector<Node>& nodes() const { return nodes_; }
  int vocab() const { return vocab_; }
  std::optional<int32_t> eos() const { return eos_; }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }  // "" = special

 private:
  std::vector<std::string> bytes_;
  int vocab_ = 0;
  std::vector<Node> nodes_;
  std::optional<int32_t> eos_;
};

// One sequence's grammar as a logits mask: the tokens whose bytes the grammar accepts, plus eos
// once the value may end. Masks are cached per grammar state (at most kCacheStates).
class JsonConstraint : public LogitsConstraint {
 public:
  JsonConstraint(std::shared_ptr<const JsonSchema> schema, std::shared_ptr<const VocabTrie> trie);
  bool mask(float* logits, int V) override;
  void accept(int32_t token) override;
  bool complete() const override { return g_.finished(); }
  // Tokens allowed next (bit i of word i/64), computed without the cache; for tests.
  std::vector<uint64_t> allowed() const;
  int64_t trie_walks() const { return walks_; }  // masks computed (cache misses)

 private:
  static constexpr size_t kCacheStates = 256;
  void walk(int node, const JsonGrammar& g, std::vector<uint64_t>& bits) const;

  JsonGrammar g_;
  std::shared_ptr<const VocabTrie> trie_;
  std::unordered_map<std::string, std::vector<uint64_t>> cache_;  // state key -> bits
  int64_t walks_ = 0;
};

// A factory for SamplingParams::constraint.
ConstraintFactory json_constraint_factory(std::shared_ptr<const JsonSchema> schema,
                                          std::shared_ptr<const VocabTrie> trie);

}  // namespace kiln::serve

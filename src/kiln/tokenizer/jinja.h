// The Jinja subset that Hugging Face chat templates are written in: a lexer -> parser -> AST ->
// evaluator whose output is byte for byte what @huggingface/jinja (the reference transformers.js
// and the chat-template oracle test use) renders, with trim_blocks and lstrip_blocks on as
// transformers configures them. Chat-template code goes through chat_template.h; this header is
// the language: values, parsing, rendering.
//
// Supported: {{ }}, {% if/elif/else %}, {% for x in xs [if cond] %}...{% else %}, loop.index0 /
// index / first / last / length / revindex / previtem / nextitem, {% set %} (plain, tuple, block,
// namespace attribute), {% macro %} with defaults and keyword arguments, {% break/continue %},
// {% filter %}, {# comments #}, whitespace control ({%- -%} {{- -}} {#- -#}), the transformers
// {% generation %} tag (dropped). Expressions: literals, lists, tuples, dicts, member access,
// subscripts and Python slices, calls with keyword arguments, filters, tests, `x if c else y`,
// and/or/not, in / not in, == != < > <= >=, + - * / // % **, ~.
// Not supported (a clear Error when used): {% call %} blocks, {% include/import/extends/block %},
// *args / **kwargs spreading in calls.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kiln::jinja {

class Value;
using List = std::vector<Value>;
// A dict keeps insertion order (tojson and `items` follow it, as Python's dict does).
using Map = std::vector<std::pair<std::string, Value>>;

// A call's arguments: positional, then keyword (`f(a, b=1)`).
struct Args {
  std::vector<Value> pos;
  Map kw;
};
using Function = std::function<Value(const Args&)>;

// One template value. Lists, dicts and namespaces are shared by reference like Python objects
// (a namespace's attributes are set through any copy).
class Value {
 public:
  enum class Kind { undefined, none, boolean, integer, floating, string, list, map, ns, function };

  Value() = default;  // undefined
  static Value none() { return Value(Kind::none); }
  Value(bool b) : kind_(Kind::boolean), v_(b) {}
  Value(int v) : Value(int64_t(v)) {}
  Value(int64_t v) : kind_(Kind::integer), v_(v) {}
  Value(double v) : kind_(Kind::floating), v_(v) {}
  Value(const char* s) : Value(std::string(s)) {}
  Value(std::string s) : kind_(Kind::string), v_(std::move(s)) {}
  explicit Value(List l) : kind_(Kind::list), v_(std::make_shared<List>(std::move(l))) {}
  explicit Value(Map m) : kind_(Kind::map), v_(std::make_shared<Map>(std::move(m))) {}
  static Value namespace_of(Map m);
  static Value function(Function f);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::undefined; }
  bool is_none() const { return kind_ == Kind::none; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_list() const { return kind_ == Kind::list; }
  bool is_map() const { return kind_ == Kind::map; }
  bool is_number() const { return kind_ == Kind::integer || kind_ == Kind::floating; }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_double() const {
    return kind_ == Kind::integer ? double(as_int()) : std::get<double>(v_);
  }
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const List& as_list() const { return *std::get<std::shared_ptr<List>>(v_); }
  // The entries of a dict or a namespace.
  const Map& as_map() const { return *std::get<std::shared_ptr<Map>>(v_); }
  Map& mutable_map() const { return *std::get<std::shared_ptr<Map>>(v_); }
  const Function& as_function() const { return *std::get<std::shared_ptr<Function>>(v_); }

  // A dict's or namespace's entry, or nullptr.
  const Value* find(std::string_view key) const;
  // Python truthiness: empty strings, lists and dicts are false.
  bool truthy() const;
  // Same object (lists, dicts, namespaces, functions) — what JS `==` compares them by.
  bool same_object(const Value& o) const;
  // Python-style type name for messages: "str", "list", "dict", ...
  std::string type_name() const;

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::undefined;
  std::variant<std::monostate, bool, int64_t, double, std::string, std::shared_ptr<List>,
               std::shared_ptr<Map>, std::shared_ptr<Function>>
      v_;
};

// JSON -> Value: objects keep their key order, integers stay integers.
Value from_json(const nlohmann::json& j);

// What {{ v }} prints: strings as they are, none/undefined as "", true/false, integers, floats
// with a ".0" when whole, lists and dicts as JSON.
std::string to_output(const Value& v);

// The `tojson` filter: JSON with ", " / ": " separators (or `indent` spaces per level), non-ASCII
// kept unless ensure_ascii.
struct JsonStyle {
  int indent = -1;  // < 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_sep, key_sep;  // empty: the defaults for the indent
};
std::string to_json(const Value& v, const JsonStyle& style = {});

struct Node;  // jinja_ast.h

// A parsed template. Parse errors and render errors throw kiln::Error naming the line and column
// of the template where they happened: "[chat_template] line 3, column 14: expected ...".
class Template {
 public:
  static Template parse(std::string_view text);
  // Renders with `vars` as the global variables (plus the builtins: true/false/none, range,
  // namespace, raise_exception, strftime_now). raise_exception("msg") throws kiln::Error with
  // "the chat template raised an error: msg".
  std::string render(const Map& vars) const;

 private:
  std::shared_ptr<const Node> root_;
  std::shared_ptr<const std::string> source_;  // the original text, for error positions
};

}  // namespace kiln::jinja

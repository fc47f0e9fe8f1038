// The syntax tree of a Jinja template (jinja.h), shared by the parser (jinja_parse.cpp) and the
// evaluator (jinja_eval.cpp). Internal to the tokenizer layer.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/jinja.h"

namespace kiln::jinja {

struct Node;
using NodePtr = std::shared_ptr<Node>;
using Nodes = std::vector<NodePtr>;

enum class NodeKind {
  // statements
  text,          // str: literal template text
  if_,           // a: test, body, alt (else branch; an elif is a nested if_ in alt)
  for_,          // a: target (ident or tuple), b: iterable, c: loop filter or null, body, alt
  set,           // a: target (ident, tuple or member), b: value or null (then body is the block)
  macro,         // str: name, args (ident / kwarg with default), body
  filter_block,  // a: the filter (ident or call), body
  break_,
  continue_,
  // expressions
  literal,  // value
  ident,    // str
  member,   // a: object, b: key expression (computed) or literal string/int (dot access)
  slice,    // a: start, b: stop, c: step (each may be null)
  call,     // a: callee, args (kwarg nodes for keyword arguments)
  kwarg,    // str: name, a: value
  filter,   // a: operand, str: filter name, args, flag: called with parentheses
  test,     // a: operand, str: test name, flag: negated
  unary,    // str: "not" | "-" | "+", a: operand
  binary,   // str: operator, a, b
  ternary,  // a: condition, b: if true, c: if false
  select,   // a: value, b: condition (`x if c` without else: undefined when false)
  list,     // args
  tuple,    // args
  dict,     // args: alternating key, value
};

struct Node {
  NodeKind kind;
  size_t pos = 0;  // byte offset in the original template, for error messages
  std::string str;
  Value value;
  NodePtr a, b, c;
  Nodes args, body, alt;
  bool flag = false;
};

// Parses `text` with @huggingface/jinja's lexing rules (trim_blocks, lstrip_blocks, a final
// newline dropped). Errors throw kiln::Error with the line and column.
NodePtr parse_template(const std::string& text);

// JavaScript's whitespace (what /\s/ and String.trim() match: ASCII spaces, NBSP, U+2000-U+200A,
// the line/paragraph separators, U+3000, BOM...): the byte length of the whitespace character
// starting at s[i] / ending just before s[end], or 0.
size_t space_at(std::string_view s, size_t i);
size_t space_before(std::string_view s, size_t end);
std::string trim(std::string_view s, bool left = true, bool right = true);

// The characters (code points) of UTF-8 text: what Python's len(), indexing and slicing count.
std::vector<std::string_view> chars_of(std::string_view s);

// How `+` and `~` print a value: as {{ v }} does, except whole floats without ".0" (JavaScript's
// String(2.0) is "2"; the reference concatenates that way).
std::string concat_form(const Value& v);

// "line L, column C" of byte `pos` of `text`.
std::string position_of(const std::string& text, size_t pos);

}  // namespace kiln::jinja

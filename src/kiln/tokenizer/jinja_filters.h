// The built-in library of the Jinja subset (jinja.h): filters (`x | trim`), tests (`x is none`)
// and the methods of strings, lists and dicts (`s.startswith('<')`, `d.items()`). Internal to
// the tokenizer layer; the evaluator (jinja_eval.cpp) calls these.
#pragma once

#include <string>
#include <string_view>

#include "kiln/tokenizer/jinja.h"

namespace kiln::jinja {

// An error inside the library, without a position yet: the evaluator catches it at the node
// being evaluated and rethrows a kiln::Error naming the template's line and column.
struct EvalError {
  std::string msg;
};
[[noreturn]] inline void raise(const std::string& msg) {
  throw EvalError{msg};
}

// The i-th positional argument, else the keyword argument `name`, else `def`.
const Value* kwarg(const Args& a, std::string_view name);
Value arg(const Args& a, size_t i, std::string_view name, Value def = Value());

// JavaScript's `a === b`, what membership (`in`) and `is equalto` compare with.
bool strict_equal(const Value& a, const Value& b);

std::string ascii_lower(std::string_view s);
std::string ascii_upper(std::string_view s);

// `value | name` or `value | name(args)` (called = with parentheses).
struct FilterCall {
  const std::string& name;
  bool called;
  const Value& value;
  const Args& args;
};
Value run_filter(const FilterCall& f);

// `value is name` (`other`: the test's argument, for selectattr's "equalto").
bool run_test(const std::string& name, const Value& value, const Value* other);

// `obj.name`: a method of a string, list or dict bound to it (or a string's `length`), else
// undefined.
Value method(const Value& obj, const std::string& name);

}  // namespace kiln::jinja

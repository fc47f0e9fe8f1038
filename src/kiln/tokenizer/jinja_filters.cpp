// Filters, tests and methods, with @huggingface/jinja's behaviour (runtime.ts) except where noted:
// str.strip/lstrip/rstrip take Python's optional `chars` (the reference ignores it; Qwen3's
// template relies on it), and string length/slicing count characters as Python does.
#include "kiln/tokenizer/jinja_filters.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kiln/core/error.h"
#include "kiln/tokenizer/jinja_ast.h"

namespace kiln::jinja {

const Value* kwarg(const Args& a, std::string_view name) {
  for (const auto& [k, v] : a.kw)
    if (k == name) return &v;
  return nullptr;
}

Value arg(const Args& a, size_t i, std::string_view name, Value def) {
  if (i < a.pos.size()) return a.pos[i];
  if (const Value* v = kwarg(a, name)) return *v;
  return def;
}

bool strict_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.as_double() == b.as_double();
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::undefined:
    case Value::Kind::none:
      return true;
    case Value::Kind::boolean:
      return a.as_bool() == b.as_bool();
    case Value::Kind::string:
      return a.as_string() == b.as_string();
    default:
      return a.same_object(b);
  }
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return out;
}

std::string ascii_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return out;
}

namespace {

using K = Value::Kind;

bool is_word(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

// JavaScript's /\b\w/g -> upper case: the first ASCII word character of each word.
std::string title_case(std::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i)
    if (is_word(out[i]) && (i == 0 || !is_word(out[i - 1])))
      out[i] = ascii_upper(out.substr(i, 1))[0];
  return out;
}

std::string capitalize(std::string_view s) {
  std::string out(s);
  if (!out.empty()) out[0] = ascii_upper(out.substr(0, 1))[0];
  return out;
}

// Python's str.strip(chars) / lstrip / rstrip; without chars, JavaScript's trim (whitespace).
std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  if (chars.is_undefined() || chars.is_none()) return trim(s, left, right);
  if (!chars.is_string()) raise("strip() takes a string of characters to remove");
  const std::vector<std::string_view> set = chars_of(chars.as_string());
  const std::vector<std::string_view> cs = chars_of(s);
  auto in_set = [&](std::string_view c) {
    return std::find(set.begin(), set.end(), c) != set.end();
  };
  size_t b = 0, e = cs.size();
  if (left)
    while (b < e && in_set(cs[b])) ++b;
  if (right)
    while (e > b && in_set(cs[e - 1])) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += cs[k];
  return out;
}

Value split(const std::string& s, const Args& a) {
  const Value sep = arg(a, 0, "sep", Value::none());
  const Value maxv = arg(a, 1, "maxsplit", Value(int64_t(-1)));
  if (maxv.kind() != K::integer) raise("split() maxsplit must be an integer");
  const int64_t max = maxv.as_int();
  List out;
  if (sep.is_none()) {  // runs of whitespace, none at the ends
    size_t i = 0;
    while (i < s.size()) {
      while (size_t k = space_at(s, i)) i += k;
      if (i >= s.size()) break;
      if (max >= 0 && int64_t(out.size()) >= max) {
        out.push_back(Value(s.substr(i)));
        break;
      }
      size_t j = i;
      while (j < s.size() && !space_at(s, j)) ++j;
      out.push_back(Value(s.substr(i, j - i)));
      i = j;
    }
    return Value(std::move(out));
  }
  if (!sep.is_string()) raise("split() separator must be a string");
  const std::string& d = sep.as_string();
  if (d.empty()) raise("split() separator must not be empty");
  size_t i = 0;
  while (true) {
    const size_t j = s.find(d, i);
    if (j == std::string::npos || (max >= 0 && int64_t(out.size()) >= max)) {
      out.push_back(Value(s.substr(i)));
      break;
    }
    out.push_back(Value(s.substr(i, j - i)));
    i = j + d.size();
  }
  return Value(std::move(out));
}

std::string replace(const std::string& s, const Args& a) {
  if (a.pos.size() < 2) raise("replace() needs the old and the new string");
  const Value &from = a.pos[0], &to = a.pos[1];
  if (!from.is_string() || !to.is_string()) raise("replace() arguments must be strings");
  const Value countv = arg(a, 2, "count", Value::none());
  if (!countv.is_none() && countv.kind() != K::integer) raise("replace() count must be an integer");
  int64_t left = countv.is_none() || countv.as_int() < 0 ? INT64_MAX : countv.as_int();
  const std::string& f = from.as_string();
  std::string out;
  if (f.empty()) {  // inserted between characters, as Python does
    for (std::string_view c : chars_of(s)) {
      if (left-- > 0) out += to.as_string();
      out += c;
    }
    if (left > 0) out += to.as_string();
    return out;
  }
  size_t i = 0;
  while (left-- > 0) {
    const size_t j = s.find(f, i);
    if (j == std::string::npos) break;
    out += s.substr(i, j - i) + to.as_string();
    i = j + f.size();
  }
  return out + s.substr(i);
}

// The order `sort` and `dictsort` use: numbers (and booleans) by value, strings case-insensitively
// unless asked, none equal to none; anything else is an error.
int compare(const Value& a, const Value& b, bool case_sensitive) {
  auto numeric = [](const Value& v) { return v.is_number() || v.kind() == K::boolean; };
  auto num = [](const Value& v) {
    return v.kind() == K::boolean ? double(v.as_bool()) : v.as_double();
  };
  if (a.is_none() && b.is_none()) return 0;
  if (numeric(a) && numeric(b)) return num(a) < num(b) ? -1 : num(a) > num(b) ? 1 : 0;
  if (a.is_string() && b.is_string()) {
    const std::string x = case_sensitive ? a.as_string() : ascii_lower(a.as_string());
    const std::string y = case_sensitive ? b.as_string() : ascii_lower(b.as_string());
    return x < y ? -1 : x > y ? 1 : 0;
  }
  raise(str("cannot compare a ", a.type_name(), " with a ", b.type_name()));
}

// item.a.b / item.0: selectattr, map and sort(attribute=) paths.
Value attribute_path(const Value& item, const std::string& path) {
  Value v = item;
  size_t i = 0;
  while (true) {
    const size_t j = path.find('.', i);
    const std::string part = path.substr(i, j == std::string::npos ? std::string::npos : j - i);
    if (v.is_map() || v.kind() == K::ns) {
      const Value* f = v.find(part);
      v = f ? *f : Value();
    } else if (v.is_list()) {
      char* end = nullptr;
      const long k = std::strtol(part.c_str(), &end, 10);
      if (end == part.c_str() || k < 0 || size_t(k) >= v.as_list().size()) return Value();
      v = v.as_list()[size_t(k)];
    } else {
      return Value();
    }
    if (j == std::string::npos) return v;
    i = j + 1;
  }
}

Value items_of(const Value& m) {
  List out;
  for (const auto& [k, v] : m.as_map()) out.push_back(Value(List{Value(k), v}));
  return Value(std::move(out));
}

Value dictsort(const Value& m, const Args& a) {
  const Value cs = arg(a, 0, "case_sensitive", Value(false));
  const Value by = arg(a, 1, "by", Value("key"));
  const Value rev = arg(a, 2, "reverse", Value(false));
  if (cs.kind() != K::boolean || rev.kind() != K::boolean)
    raise("dictsort() flags must be booleans");
  if (!by.is_string() || (by.as_string() != "key" && by.as_string() != "value"))
    raise("dictsort() by must be 'key' or 'value'");
  List items = items_of(m).as_list();
  const size_t k = by.as_string() == "key" ? 0 : 1;
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    const int c = compare(x.as_list()[k], y.as_list()[k], cs.as_bool());
    return rev.as_bool() ? c > 0 : c < 0;
  });
  return Value(std::move(items));
}

// JavaScript's parseInt(s, 10) / parseFloat(s): leading spaces, then the longest number prefix.
bool parse_number(const std::string& s, bool integer, double& out) {
  const std::string t = trim(s, true, false);
  const char* p = t.c_str();
  char* end = nullptr;
  out = integer ? double(std::strtoll(p, &end, 10)) : std::strtod(p, &end);
  return end != p;
}

std::string join_values(const List& l, const std::string& sep) {
  std::string out;
  for (size_t k = 0; k < l.size(); ++k) {
    if (k) out += sep;
    if (!l[k].is_none() && !l[k].is_undefined()) out += concat_form(l[k]);
  }
  return out;
}

std::string indent(const std::string& s, const std::string& pad, bool first, bool blank) {
  std::string out;
  size_t i = 0, line = 0;
  while (true) {
    const size_t j = s.find('\n', i);
    const std::string ln = s.substr(i, j == std::string::npos ? std::string::npos : j - i);
    if ((first || line > 0) && (blank || !ln.empty())) out += pad;
    out += ln;
    if (j == std::string::npos) return out;
    out += '\n';
    i = j + 1, ++line;
  }
}

Value filter_plain(const std::string& name, const Value& v) {
  if (v.is_list()) {
    const List& l = v.as_list();
    if (name == "list") return v;
    if (name == "first") return l.empty() ? Value() : l.front();
    if (name == "last") return l.empty() ? Value() : l.back();
    if (name == "length" || name == "count") return Value(int64_t(l.size()));
    if (name == "reverse") return Value(List(l.rbegin(), l.rend()));
    if (name == "sort") {
      List out = l;
      std::stable_sort(out.begin(), out.end(),
                       [](const Value& a, const Value& b) { return compare(a, b, false) < 0; });
      return Value(std::move(out));
    }
    if (name == "join") return Value(join_values(l, ""));
    if (name == "string") return Value(to_output(v));
    if (name == "unique") {
      List out;
      for (const Value& x : l)
        if (std::none_of(out.begin(), out.end(),
                         [&](const Value& y) { return strict_equal(x, y); }))
          out.push_back(x);
      return Value(std::move(out));
    }
  } else if (v.is_string()) {
    const std::string& s = v.as_string();
    if (name == "length" || name == "count") return Value(int64_t(chars_of(s).size()));
    if (name == "upper") return Value(ascii_upper(s));
    if (name == "lower") return Value(ascii_lower(s));
    if (name == "title") return Value(title_case(s));
    if (name == "capitalize") return Value(capitalize(s));
    if (name == "trim") return Value(trim(s));
    if (name == "indent") return Value(indent(s, "    ", false, false));
    if (name == "join" || name == "string") return v;
    if (name == "int" || name == "float") {
      double x = 0;
      const bool ok = parse_number(s, name == "int", x);
      return name == "int" ? Value(int64_t(ok ? x : 0)) : Value(ok ? x : 0.0);
    }
  } else if (v.is_number()) {
    if (name == "abs")
      return v.kind() == K::integer ? Value(int64_t(std::llabs(v.as_int())))
                                    : Value(std::fabs(v.as_double()));
    if (name == "int") return Value(int64_t(std::trunc(v.as_double())));
    if (name == "float") return Value(v.as_double());
    if (name == "string") return Value(to_output(v));
  } else if (v.is_map()) {
    if (name == "items") return items_of(v);
    if (name == "length" || name == "count") return Value(int64_t(v.as_map().size()));
    const Value m = method(v, name);
    if (m.kind() == K::function) return m.as_function()(Args{});
  } else if (v.kind() == K::boolean) {
    if (name == "bool") return v;
    if (name == "int") return Value(int64_t(v.as_bool()));
    if (name == "float") return Value(v.as_bool() ? 1.0 : 0.0);
    if (name == "string") return Value(to_output(v));
  }
  raise(str("the filter '", name, "' does not apply to a ", v.type_name()));
}

Value filter_called(const std::string& name, const Value& v, const Args& a) {
  if (name == "tojson") {
    JsonStyle st;
    const Value ind = arg(a, 99, "indent", Value::none());
    if (!ind.is_none() && ind.kind() != K::integer) raise("tojson indent must be an integer");
    st.indent = ind.is_none() ? -1 : int(ind.as_int());
    const Value ea = arg(a, 99, "ensure_ascii", Value(false));
    const Value sk = arg(a, 99, "sort_keys", Value(false));
    if (ea.kind() != K::boolean || sk.kind() != K::boolean) raise("tojson flags must be booleans");
    st.ensure_ascii = ea.as_bool(), st.sort_keys = sk.as_bool();
    const Value sep = arg(a, 99, "separators", Value::none());
    if (!sep.is_none()) {
      if (!sep.is_list() || sep.as_list().size() != 2 || !sep.as_list()[0].is_string() ||
          !sep.as_list()[1].is_string())
        raise("tojson separators must be a pair of strings");
      st.item_sep = sep.as_list()[0].as_string(), st.key_sep = sep.as_list()[1].as_string();
    }
    return Value(to_json(v, st));
  }
  if (name == "join") {
    const Value sep = arg(a, 0, "separator", Value(""));
    if (!sep.is_string()) raise("join separator must be a string");
    if (v.is_string()) {
      List l;
      for (std::string_view c : chars_of(v.as_string())) l.push_back(Value(std::string(c)));
      return Value(join_values(l, sep.as_string()));
    }
    if (v.is_list()) return Value(join_values(v.as_list(), sep.as_string()));
    raise(str("the filter 'join' does not apply to a ", v.type_name()));
  }
  if (name == "int" || name == "float") {
    const Value def = arg(a, 0, "default", name == "int" ? Value(int64_t(0)) : Value(0.0));
    if (v.is_string()) {
      double x = 0;
      if (!parse_number(v.as_string(), name == "int", x)) return def;
      return name == "int" ? Value(int64_t(x)) : Value(x);
    }
    if (v.is_number() || v.kind() == K::boolean) return filter_plain(name, v);
    raise(str("the filter '", name, "' does not apply to a ", v.type_name()));
  }
  if (name == "default" || name == "d") {
    const Value def = arg(a, 0, "default_value", Value(""));
    const Value boolean = arg(a, 1, "boolean", Value(false));
    if (boolean.kind() != K::boolean) raise("default()'s boolean flag must be a boolean");
    return v.is_undefined() || (boolean.as_bool() && !v.truthy()) ? def : v;
  }
  if (v.is_list()) {
    const List& l = v.as_list();
    if (name == "sort") {
      const Value rev = arg(a, 0, "reverse", Value(false));
      const Value cs = arg(a, 1, "case_sensitive", Value(false));
      const Value attr = arg(a, 2, "attribute", Value::none());
      if (rev.kind() != K::boolean || cs.kind() != K::boolean)
        raise("sort() flags must be booleans");
      auto key = [&](const Value& x) {
        if (attr.is_none()) return x;
        return attribute_path(
            x, attr.kind() == K::integer ? std::to_string(attr.as_int()) : to_output(attr));
      };
      List out = l;
      std::stable_sort(out.begin(), out.end(), [&](const Value& x, const Value& y) {
        const int c = compare(key(x), key(y), cs.as_bool());
        return rev.as_bool() ? c > 0 : c < 0;
      });
      return Value(std::move(out));
    }
    if (name == "selectattr" || name == "rejectattr") {
      const bool select = name == "selectattr";
      if (a.pos.empty()) raise(str(name, "() needs an attribute name"));
      const std::string& attr = a.pos[0].as_string();
      List out;
      for (const Value& item : l) {
        if (!item.is_map() && item.kind() != K::ns)
          raise(str(name, "() applies to a list of dicts"));
        const Value* x = item.find(attr);
        bool r = false;
        if (x)
          r = a.pos.size() > 1
                  ? run_test(a.pos[1].as_string(), *x, a.pos.size() > 2 ? &a.pos[2] : nullptr)
                  : x->truthy();
        if (r == select) out.push_back(item);
      }
      return Value(std::move(out));
    }
    if (name == "map") {
      const Value* attr = kwarg(a, "attribute");
      if (!attr || !attr->is_string()) raise("map() is supported with attribute='name' only");
      const Value* def = kwarg(a, "default");
      List out;
      for (const Value& item : l) {
        if (!item.is_map() && item.kind() != K::ns) raise("map() applies to a list of dicts");
        Value x = attribute_path(item, attr->as_string());
        out.push_back(x.is_undefined() && def ? *def : x);
      }
      return Value(std::move(out));
    }
  } else if (v.is_string()) {
    if (name == "indent") {
      const Value width = arg(a, 0, "width", Value(int64_t(4)));
      const Value first = arg(a, 1, "first", Value(false));
      const Value blank = arg(a, 2, "blank", Value(false));
      std::string pad;
      if (width.is_string())
        pad = width.as_string();
      else if (width.kind() == K::integer)
        pad = std::string(size_t(std::max<int64_t>(0, width.as_int())), ' ');
      else
        raise("indent() width must be an integer or a string");
      return Value(indent(v.as_string(), pad, first.truthy(), blank.truthy()));
    }
    if (name == "replace") return Value(replace(v.as_string(), a));
  } else if (v.is_map()) {
    const Value m = method(v, name);
    if (m.kind() == K::function) return m.as_function()(a);
  }
  raise(str("the filter '", name, "(...)' does not apply to a ", v.type_name()));
}

}  // namespace

Value run_filter(const FilterCall& f) {
  if (f.name == "safe") return f.value;
  if (!f.called) {
    if (f.name == "tojson") return Value(to_json(f.value));
    return filter_plain(f.name, f.value);
  }
  return filter_called(f.name, f.value, f.args);
}

bool run_test(const std::string& name, const Value& v, const Value* other) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == K::integer;
  if (name == "boolean") return v.kind() == K::boolean;
  if (name == "true") return v.kind() == K::boolean && v.as_bool();
  if (name == "false") return v.kind() == K::boolean && !v.as_bool();
  if (name == "mapping") return v.is_map();
  if (name == "iterable") return v.is_list() || v.is_string();
  if (name == "sequence") return v.is_list() || v.is_map() || v.is_string();
  if (name == "callable") return v.kind() == K::function;
  if (name == "odd" || name == "even") {
    if (v.kind() != K::integer)
      raise(str("the test '", name, "' needs an integer, got a ", v.type_name()));
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    return v.as_string() ==
           (name == "lower" ? ascii_lower(v.as_string()) : ascii_upper(v.as_string()));
  }
  if (name == "equalto" || name == "eq") return strict_equal(v, other ? *other : Value());
  raise(str("unknown test '", name, "'"));
}

Value method(const Value& obj, const std::string& name) {
  if (obj.is_list()) return name == "length" ? Value(int64_t(obj.as_list().size())) : Value();
  if (obj.is_string()) {
    const std::string s = obj.as_string();
    if (name == "length") return Value(int64_t(chars_of(s).size()));
    auto fn = [](auto f) { return Value::function(std::move(f)); };
    if (name == "upper") return fn([s](const Args&) { return Value(ascii_upper(s)); });
    if (name == "lower") return fn([s](const Args&) { return Value(ascii_lower(s)); });
    if (name == "title") return fn([s](const Args&) { return Value(title_case(s)); });
    if (name == "capitalize") return fn([s](const Args&) { return Value(capitalize(s)); });
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return fn([s, name](const Args& a) {
        return Value(strip(s, arg(a, 0, "chars"), name != "rstrip", name != "lstrip"));
      });
    if (name == "startswith" || name == "endswith")
      return fn([s, name](const Args& a) {
        if (a.pos.empty()) raise(str(name, "() needs an argument"));
        auto test = [&](const Value& p) {
          if (!p.is_string()) raise(str(name, "() takes a string or a tuple of strings"));
          const std::string& t = p.as_string();
          if (t.size() > s.size()) return false;
          return name == "startswith" ? s.compare(0, t.size(), t) == 0
                                      : s.compare(s.size() - t.size(), t.size(), t) == 0;
        };
        if (a.pos[0].is_list()) {
          for (const Value& p : a.pos[0].as_list())
            if (test(p)) return Value(true);
          return Value(false);
        }
        return Value(test(a.pos[0]));
      });
    if (name == "split") return fn([s](const Args& a) { return split(s, a); });
    if (name == "replace") return fn([s](const Args& a) { return Value(replace(s, a)); });
    return Value();
  }
  if (obj.is_map()) {
    if (name == "get")
      return Value::function([obj](const Args& a) {
        if (a.pos.empty() || !a.pos[0].is_string()) raise("get() needs a string key");
        const Value* v = obj.find(a.pos[0].as_string());
        return v ? *v : a.pos.size() > 1 ? a.pos[1] : Value::none();
      });
    if (name == "items") return Value::function([obj](const Args&) { return items_of(obj); });
    if (name == "keys")
      return Value::function([obj](const Args&) {
        List out;
        for (const auto& [k, v] : obj.as_map()) out.push_back(Value(k));
        return Value(std::move(out));
      });
    if (name == "values")
      return Value::function([obj](const Args&) {
        List out;
        for (const auto& [k, v] : obj.as_map()) out.push_back(v);
        return Value(std::move(out));
      });
    if (name == "dictsort")
      return Value::function([obj](const Args& a) { return dictsort(obj, a); });
  }
  return Value();
}

}  // namespace kiln::jinja

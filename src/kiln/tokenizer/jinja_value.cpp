// Template values: construction from JSON, printing ({{ v }}), the tojson filter, and the
// whitespace rules the lexer and the trim filter share.
#include <algorithm>
#include <charconv>
#include <cmath>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/tokenizer/jinja_ast.h"

namespace kiln::jinja {

Value Value::namespace_of(Map m) {
  Value v(Kind::ns);
  v.v_ = std::make_shared<Map>(std::move(m));
  return v;
}

Value Value::function(Function f) {
  Value v(Kind::function);
  v.v_ = std::make_shared<Function>(std::move(f));
  return v;
}

const Value* Value::find(std::string_view key) const {
  if (kind_ != Kind::map && kind_ != Kind::ns) return nullptr;
  for (const auto& [k, v] : as_map())
    if (k == key) return &v;
  return nullptr;
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::undefined:
    case Kind::none:
      return false;
    case Kind::boolean:
      return as_bool();
    case Kind::integer:
      return as_int() != 0;
    case Kind::floating:
      return as_double() != 0 && !std::isnan(as_double());
    case Kind::string:
      return !as_string().empty();
    case Kind::list:
      return !as_list().empty();
    case Kind::map:
      return !as_map().empty();
    case Kind::ns:
    case Kind::function:
      return true;
  }
  return false;
}

bool Value::same_object(const Value& o) const {
  return kind_ == o.kind_ && v_ == o.v_;
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::undefined:
      return "undefined";
    case Kind::none:
      return "none";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::floating:
      return "float";
    case Kind::string:
      return "str";
    case Kind::list:
      return "list";
    case Kind::map:
      return "dict";
    case Kind::ns:
      return "namespace";
    case Kind::function:
      return "function";
  }
  return "?";
}

Value from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return Value(int64_t(j.get<uint64_t>()));
    case nlohmann::json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Map m;
      for (const auto& [k, v] : j.items()) m.emplace_back(k, from_json(v));
      return Value(std::move(m));
    }
    default:
      fail("chat_template", "cannot pass a binary JSON value to a template");
  }
}

namespace {

// JavaScript's Number.prototype.toString for the numbers templates meet: whole numbers without
// a fraction, others in the shortest form that reads back the same.
std::string js_number(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x == std::floor(x) && std::fabs(x) < 1e21) return std::to_string(int64_t(x));
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

uint32_t decode_utf8(std::string_view s, size_t& i) {
  const unsigned char c = s[i];
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + len > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

void append_hex4(std::string& out, uint32_t u) {
  static const char* hex = "0123456789abcdef";
  out += "\\u";
  for (int sh = 12; sh >= 0; sh -= 4) out.push_back(hex[(u >> sh) & 0xF]);
}

// JSON.stringify of a string (and Python's json.dumps with ensure_ascii=False for the same text).
void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = s[i];
    if (c >= 0x80 && ensure_ascii) {
      const uint32_t cp = decode_utf8(s, i);
      if (cp > 0xFFFF) {
        append_hex4(out, 0xD800 + ((cp - 0x10000) >> 10));
        append_hex4(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
      } else {
        append_hex4(out, cp);
      }
      continue;
    }
    ++i;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || (c == 0x7F && ensure_ascii))
          append_hex4(out, c);
        else
          out.push_back(char(c));
    }
  }
  out.push_back('"');
}

void json_value(std::string& out, const Value& v, const JsonStyle& st, int depth, bool undef_null) {
  using K = Value::Kind;
  const std::string item_sep = !st.item_sep.empty() ? st.item_sep : st.indent > 0 ? "," : ", ";
  const std::string key_sep = !st.key_sep.empty() ? st.key_sep : ": ";
  const std::string pad = st.indent > 0 ? std::string(size_t(st.indent), ' ') : "";
  auto newline = [&](int d) {
    out.push_back('\n');
    for (int k = 0; k < d; ++k) out += pad;
  };
  switch (v.kind()) {
    case K::undefined:
      out += undef_null ? "null" : "undefined";
      return;
    case K::none:
      out += "null";
      return;
    case K::boolean:
      out += v.as_bool() ? "true" : "false";
      return;
    case K::integer:
      out += std::to_string(v.as_int());
      return;
    case K::floating:
      out += js_number(v.as_double());
      return;
    case K::string:
      json_string(out, v.as_string(), st.ensure_ascii);
      return;
    case K::list: {
      const List& l = v.as_list();
      out.push_back('[');
      for (size_t k = 0; k < l.size(); ++k) {
        if (k) out += item_sep;
        if (st.indent > 0) newline(depth + 1);
        json_value(out, l[k], st, depth + 1, undef_null);
      }
      if (st.indent > 0 && !l.empty()) newline(depth);
      out.push_back(']');
      return;
    }
    case K::map:
    case K::ns: {
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& e : v.as_map()) items.push_back(&e);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](auto* a, auto* b) { return a->first < b->first; });
      out.push_back('{');
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += item_sep;
        if (st.indent > 0) newline(depth + 1);
        json_string(out, items[k]->first, st.ensure_ascii);
        out += key_sep;
        json_value(out, items[k]->second, st, depth + 1, undef_null);
      }
      if (st.indent > 0 && !items.empty()) newline(depth);
      out.push_back('}');
      return;
    }
    case K::function:
      fail("chat_template", "cannot convert a function to JSON");
  }
}

}  // namespace

std::string to_json(const Value& v, const JsonStyle& style) {
  std::string out;
  json_value(out, v, style, 0, /*undef_null=*/true);
  return out;
}

std::string to_output(const Value& v) {
  using K = Value::Kind;
  switch (v.kind()) {
    case K::undefined:
    case K::none:
      return "";
    case K::boolean:
      return v.as_bool() ? "true" : "false";
    case K::integer:
      return std::to_string(v.as_int());
    case K::floating: {
      const double x = v.as_double();
      if (x == 0 && std::signbit(x)) return "-0.0";
      if (x == std::floor(x) && std::fabs(x) < 1e21) return std::to_string(int64_t(x)) + ".0";
      return js_number(x);
    }
    case K::string:
      return v.as_string();
    case K::list:
    case K::map:
    case K::ns: {
      std::string out;
      json_value(out, v, {}, 0, /*undef_null=*/false);
      return out;
    }
    case K::function:
      return "[function]";
  }
  return "";
}

// The concatenation form (`+` and `~`): JavaScript's String(value), where whole floats have no
// ".0" (a quirk of the reference kept for byte equality).
std::string concat_form(const Value& v) {
  if (v.kind() == Value::Kind::floating) return js_number(v.as_double());
  return to_output(v);
}

size_t space_at(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  const unsigned char c = s[i];
  if (c < 0x80) return (c == ' ' || (c >= 9 && c <= 13)) ? 1 : 0;
  size_t j = i;
  const uint32_t cp = decode_utf8(s, j);
  const bool sp = cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
                  cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
  return sp ? j - i : 0;
}

size_t space_before(std::string_view s, size_t end) {
  if (end == 0) return 0;
  size_t start = end - 1;
  while (start > 0 && end - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80)
    --start;
  return space_at(s, start) == end - start ? end - start : 0;
}

std::vector<std::string_view> chars_of(std::string_view s) {
  std::vector<std::string_view> out;
  for (size_t i = 0; i < s.size();) {
    const size_t start = i;
    decode_utf8(s, i);
    out.push_back(s.substr(start, i - start));
  }
  return out;
}

std::string trim(std::string_view s, bool left, bool right) {
  size_t b = 0, e = s.size();
  if (left)
    while (size_t k = space_at(s, b)) b += k;
  if (right)
    while (e > b && space_before(s, e)) e -= space_before(s, e);
  return std::string(s.substr(b, e - b));
}

}  // namespace kiln::jinja

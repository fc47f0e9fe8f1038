// Syntax tree -> text. Scoping, operators and filters follow @huggingface/jinja (runtime.ts), the
// oracle, so output is byte for byte its output; where it departs from Python's Jinja on what
// real templates do, Python wins and the line says so (str.strip(chars), len() counting
// characters, for over undefined being empty).
#include <algorithm>
#include <cmath>
#include <ctime>

#include "kiln/core/error.h"
#include "kiln/tokenizer/jinja_ast.h"
#include "kiln/tokenizer/jinja_filters.h"

namespace kiln::jinja {
namespace {

struct Scope {
  std::shared_ptr<Scope> parent;
  Map vars;

  Value* local(std::string_view name) {
    for (auto& [k, v] : vars)
      if (k == name) return &v;
    return nullptr;
  }
  Value lookup(std::string_view name) {
    for (Scope* s = this; s; s = s->parent.get())
      if (Value* v = s->local(name)) return *v;
    return Value();
  }
  void set(const std::string& name, Value v) {
    if (Value* old = local(name))
      *old = std::move(v);
    else
      vars.emplace_back(name, std::move(v));
  }
};
using ScopePtr = std::shared_ptr<Scope>;

ScopePtr child(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

struct BreakSignal {};
struct ContinueSignal {};

// JavaScript's `a == b` on the values the reference compares: numbers (and booleans) by value,
// strings by content, none and undefined equal to each other, containers by identity.
bool loose_equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  auto numeric = [](const Value& v) { return v.is_number() || v.kind() == K::boolean; };
  auto num = [](const Value& v) {
    return v.kind() == K::boolean ? double(v.as_bool()) : v.as_double();
  };
  const bool a_nil = a.is_none() || a.is_undefined(), b_nil = b.is_none() || b.is_undefined();
  if (a_nil || b_nil) return a_nil && b_nil;
  if (numeric(a) && numeric(b)) return num(a) == num(b);
  if (a.is_string() && b.is_string()) return a.as_string() == b.as_string();
  return a.same_object(b);
}

Value slice_of(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  for (const Value* v : {&start, &stop, &step})
    if (!v->is_undefined() && !v->is_none() && v->kind() != Value::Kind::integer)
      raise("slice indices must be integers");
  std::vector<std::string_view> chars;
  int64_t n;
  if (obj.is_list()) {
    n = int64_t(obj.as_list().size());
  } else if (obj.is_string()) {
    chars = chars_of(obj.as_string());
    n = int64_t(chars.size());
  } else {
    raise(str("cannot slice a ", obj.type_name()));
  }
  auto given = [](const Value& v) { return v.kind() == Value::Kind::integer; };
  const int64_t st = given(step) ? step.as_int() : 1;
  if (st == 0) raise("slice step cannot be zero");
  int64_t b, e;
  if (st > 0) {
    b = given(start) ? start.as_int() : 0;
    e = given(stop) ? stop.as_int() : n;
    b = b < 0 ? std::max<int64_t>(n + b, 0) : std::min(b, n);
    e = e < 0 ? std::max<int64_t>(n + e, 0) : std::min(e, n);
  } else {
    b = given(start) ? start.as_int() : n - 1;
    e = given(stop) ? stop.as_int() : -1;
    b = b < 0 ? std::max<int64_t>(n + b, -1) : std::min(b, n - 1);
    e = e < -1 ? std::max<int64_t>(n + e, -1) : std::min(e, n - 1);
  }
  List items;
  std::string s;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
    if (obj.is_list())
      items.push_back(obj.as_list()[size_t(i)]);
    else
      s += chars[size_t(i)];
  }
  return obj.is_list() ? Value(std::move(items)) : Value(std::move(s));
}

// obj[i] for lists and strings: negative counts from the end; out of range is undefined.
Value index_of(const Value& obj, int64_t i) {
  if (obj.is_list()) {
    const List& l = obj.as_list();
    if (i < 0) i += int64_t(l.size());
    return i >= 0 && i < int64_t(l.size()) ? l[size_t(i)] : Value();
  }
  std::vector<std::string_view> chars = chars_of(obj.as_string());
  if (i < 0) i += int64_t(chars.size());
  return i >= 0 && i < int64_t(chars.size()) ? Value(std::string(chars[size_t(i)])) : Value();
}

class Interp {
 public:
  explicit Interp(const std::string& source) : source_(source) {}

  void block(const Nodes& body, const ScopePtr& env, std::string& out) {
    for (const NodePtr& n : body) statement(*n, env, out);
  }

  [[noreturn]] void error(const Node& n, const std::string& msg) const {
    fail("chat_template", position_of(source_, n.pos), ": ", msg);
  }

  Value eval(const Node& n, const ScopePtr& env) {
    try {
      return eval_inner(n, env);
    } catch (const EvalError& e) {
      error(n, e.msg);
    }
  }

 private:
  void statement(const Node& n, const ScopePtr& env, std::string& out) {
    switch (n.kind) {
      case NodeKind::text:
        out += n.str;
        return;
      case NodeKind::if_:
        block(eval(*n.a, env).truthy() ? n.body : n.alt, env, out);
        return;
      case NodeKind::for_:
        render_for(n, env, out);
        return;
      case NodeKind::set:
        run_set(n, env);
        return;
      case NodeKind::macro:
        define_macro(n, env);
        return;
      case NodeKind::filter_block: {
        std::string body;
        block(n.body, env, body);
        out += to_output(apply_filter(*n.a, Value(std::move(body)), env));
        return;
      }
      case NodeKind::break_:
        throw BreakSignal{};
      case NodeKind::continue_:
        throw ContinueSignal{};
      default: {
        const Value v = eval(n, env);
        out += to_output(v);
      }
    }
  }

  void bind(const Node& target, const Value& v, Scope& scope) {
    if (target.kind == NodeKind::ident) {
      scope.set(target.str, v);
      return;
    }
    if (!v.is_list()) error(target, str("cannot unpack a ", v.type_name(), " into several names"));
    const List& l = v.as_list();
    if (l.size() != target.args.size())
      error(target, str("cannot unpack ", l.size(), " values into ", target.args.size(), " names"));
    for (size_t k = 0; k < l.size(); ++k) {
      if (target.args[k]->kind != NodeKind::ident) error(*target.args[k], "expected a name");
      scope.set(target.args[k]->str, l[k]);
    }
  }

  void render_for(const Node& n, const ScopePtr& env, std::string& out) {
    ScopePtr scope = child(env);
    const Value it = eval(*n.b, scope);
    List candidates;
    if (it.is_list()) {
      candidates = it.as_list();
    } else if (it.is_map()) {
      for (const auto& [k, v] : it.as_map()) candidates.push_back(Value(k));
    } else if (it.is_string()) {
      for (std::string_view c : chars_of(it.as_string()))
        candidates.push_back(Value(std::string(c)));
    } else if (!it.is_undefined()) {  // Python's Jinja iterates undefined as empty
      error(*n.b, str("cannot loop over a ", it.type_name()));
    }
    List items;
    if (n.c) {
      for (const Value& v : candidates) {
        ScopePtr test_scope = child(scope);
        bind(*n.a, v, *test_scope);
        if (eval(*n.c, test_scope).truthy()) items.push_back(v);
      }
    } else {
      items = std::move(candidates);
    }
    const int64_t len = int64_t(items.size());
    bool iterated = false;
    for (int64_t i = 0; i < len; ++i) {
      scope->set("loop", Value(Map{{"index", Value(i + 1)},
                                   {"index0", Value(i)},
                                   {"revindex", Value(len - i)},
                                   {"revindex0", Value(len - i - 1)},
                                   {"first", Value(i == 0)},
                                   {"last", Value(i == len - 1)},
                                   {"length", Value(len)},
                                   {"previtem", i > 0 ? items[size_t(i - 1)] : Value()},
                                   {"nextitem", i + 1 < len ? items[size_t(i + 1)] : Value()}}));
      bind(*n.a, items[size_t(i)], *scope);
      try {
        block(n.body, scope, out);
      } catch (const ContinueSignal&) {
        continue;
      } catch (const BreakSignal&) {
        break;
      }
      iterated = true;
    }
    if (!iterated) block(n.alt, scope, out);
  }

  void run_set(const Node& n, const ScopePtr& env) {
    Value rhs;
    if (n.b) {
      rhs = eval(*n.b, env);
    } else {
      std::string body;
      block(n.body, env, body);
      rhs = Value(std::move(body));
    }
    const Node& t = *n.a;
    if (t.kind == NodeKind::ident || t.kind == NodeKind::tuple) {
      bind(t, rhs, *env);
    } else if (t.kind == NodeKind::member) {
      const Value obj = eval(*t.a, env);
      if (obj.kind() != Value::Kind::ns)
        error(t, "only a namespace() can have attributes set: use {% set ns = namespace(...) %}");
      const std::string& key = t.b->value.is_string() ? t.b->value.as_string() : "";
      if (key.empty()) error(t, "a namespace attribute must be set by name: ns.name = ...");
      Map& m = obj.mutable_map();
      for (auto& [k, v] : m)
        if (k == key) {
          v = std::move(rhs);
          return;
        }
      m.emplace_back(key, std::move(rhs));
    } else {
      error(t, "cannot assign to this expression");
    }
  }

  void define_macro(const Node& n, const ScopePtr& env) {
    const Node* node = &n;
    std::weak_ptr<Scope> def = env;  // the defining scope outlives every call made while rendering
    env->set(n.str, Value::function([this, node, def](const Args& a) {
               ScopePtr scope = child(def.lock());
               std::vector<const Node*> pending;
               std::vector<std::string> used;
               for (size_t k = 0; k < node->args.size(); ++k) {
                 const Node& p = *node->args[k];
                 const std::string& name = p.kind == NodeKind::kwarg ? p.str : p.str;
                 Value v;
                 if (k < a.pos.size()) {
                   v = a.pos[k];
                 } else if (const Value* kv = kwarg(a, name)) {
                   v = *kv, used.push_back(name);
                 } else if (p.kind == NodeKind::kwarg) {
                   pending.push_back(&p);
                 }
                 scope->set(name, v);
               }
               Map rest;
               for (const auto& [k, v] : a.kw)
                 if (std::find(used.begin(), used.end(), k) == used.end()) rest.emplace_back(k, v);
               scope->set("kwargs", Value(std::move(rest)));
               List extra;
               for (size_t k = node->args.size(); k < a.pos.size(); ++k) extra.push_back(a.pos[k]);
               scope->set("varargs", Value(std::move(extra)));
               for (const Node* p : pending) scope->set(p->str, eval(*p->a, scope));
               std::string out;
               block(node->body, scope, out);
               return Value(std::move(out));
             }));
  }

  Args eval_args(const Nodes& nodes, const ScopePtr& env) {
    Args a;
    for (const NodePtr& p : nodes)
      if (p->kind != NodeKind::kwarg) a.pos.push_back(eval(*p, env));
    for (const NodePtr& p : nodes)
      if (p->kind == NodeKind::kwarg) a.kw.emplace_back(p->str, eval(*p->a, env));
    return a;
  }

  Value eval_inner(const Node& n, const ScopePtr& env) {
    switch (n.kind) {
      case NodeKind::literal:
        return n.value;
      case NodeKind::ident:
        return env->lookup(n.str);
      case NodeKind::member:
        return member(n, env);
      case NodeKind::call: {
        Args a = eval_args(n.args, env);
        const Value fn = eval(*n.a, env);
        if (fn.kind() != Value::Kind::function)
          raise(str("cannot call a ", fn.type_name(),
                    fn.is_undefined() ? " (the name is not defined)" : ""));
        return fn.as_function()(a);
      }
      case NodeKind::filter:
        return apply_filter(n, eval(*n.a, env), env);
      case NodeKind::test: {
        const bool r = run_test(n.str, eval(*n.a, env), nullptr);
        return Value(n.flag ? !r : r);
      }
      case NodeKind::unary: {
        const Value v = eval(*n.a, env);
        if (n.str == "not") return Value(!v.truthy());
        const double sign = n.str == "-" ? -1 : 1;
        if (v.kind() == Value::Kind::floating) return Value(sign * v.as_double());
        if (v.kind() == Value::Kind::integer) return Value(int64_t(sign) * v.as_int());
        if (v.kind() == Value::Kind::boolean) return Value(int64_t(sign) * int64_t(v.as_bool()));
        raise(str("unary '", n.str, "' needs a number, got a ", v.type_name()));
      }
      case NodeKind::binary:
        return binary(n, env);
      case NodeKind::ternary:
        return eval(*n.a, env).truthy() ? eval(*n.b, env) : eval(*n.c, env);
      case NodeKind::select:
        return eval(*n.b, env).truthy() ? eval(*n.a, env) : Value();
      case NodeKind::list:
      case NodeKind::tuple: {
        List l;
        for (const NodePtr& p : n.args) l.push_back(eval(*p, env));
        return Value(std::move(l));
      }
      case NodeKind::dict: {
        Map m;
        for (size_t k = 0; k + 1 < n.args.size(); k += 2) {
          const Value key = eval(*n.args[k], env);
          if (!key.is_string()) error(*n.args[k], "dict keys must be strings");
          Value v = eval(*n.args[k + 1], env);
          bool found = false;
          for (auto& [mk, mv] : m)
            if (mk == key.as_string()) mv = v, found = true;
          if (!found) m.emplace_back(key.as_string(), std::move(v));
        }
        return Value(std::move(m));
      }
      case NodeKind::slice:
        raise("a slice is only allowed inside []");
      default:
        error(n, "a statement where an expression was expected");
    }
  }

  Value member(const Node& n, const ScopePtr& env) {
    const Value obj = eval(*n.a, env);
    if (n.b->kind == NodeKind::slice) {
      const Node& s = *n.b;
      return slice_of(obj, s.a ? eval(*s.a, env) : Value(), s.b ? eval(*s.b, env) : Value(),
                      s.c ? eval(*s.c, env) : Value());
    }
    const Value key = eval(*n.b, env);
    if (obj.is_map() || obj.kind() == Value::Kind::ns) {
      if (!key.is_string()) raise(str("a dict key must be a string, got a ", key.type_name()));
      if (const Value* v = obj.find(key.as_string())) return *v;
      return obj.is_map() ? method(obj, key.as_string()) : Value();
    }
    if (obj.is_list() || obj.is_string()) {
      if (key.kind() == Value::Kind::integer) return index_of(obj, key.as_int());
      if (key.is_string()) return method(obj, key.as_string());
      raise(str("a ", obj.type_name(), " index must be an integer, got a ", key.type_name()));
    }
    return Value();  // attributes of none, undefined and numbers are undefined
  }

  Value binary(const Node& n, const ScopePtr& env) {
    const std::string& op = n.str;
    const Value l = eval(*n.a, env);
    if (op == "and") return l.truthy() ? eval(*n.b, env) : l;
    if (op == "or") return l.truthy() ? l : eval(*n.b, env);
    const Value r = eval(*n.b, env);
    if (op == "==") return Value(loose_equal(l, r));
    if (op == "!=") return Value(!loose_equal(l, r));
    using K = Value::Kind;
    if (l.is_number() && r.is_number() && op != "~" && op != "**") {
      const bool fl = l.kind() == K::floating || r.kind() == K::floating;
      if (!fl && (op == "+" || op == "-" || op == "*")) {
        const int64_t a = l.as_int(), b = r.as_int();
        return Value(op == "+" ? a + b : op == "-" ? a - b : a * b);
      }
      const double a = l.as_double(), b = r.as_double();
      if (op == "+") return Value(a + b);
      if (op == "-") return Value(a - b);
      if (op == "*") return Value(a * b);
      if (op == "/") {
        if (b == 0) raise("division by zero");
        return Value(a / b);
      }
      if (op == "//" || op == "%") {
        if (b == 0) raise(op == "//" ? "integer division by zero" : "modulo by zero");
        if (op == "//") return fl ? Value(std::floor(a / b)) : Value(int64_t(std::floor(a / b)));
        return fl ? Value(std::fmod(a, b)) : Value(l.as_int() % r.as_int());  // JS sign rule
      }
      if (op == "<") return Value(a < b);
      if (op == ">") return Value(a > b);
      if (op == "<=") return Value(a <= b);
      if (op == ">=") return Value(a >= b);
    }
    if (l.is_undefined() || r.is_undefined()) {
      if (r.is_undefined() && (op == "in" || op == "not in")) return Value(op == "not in");
      if (op == "~" && !l.is_none() && !r.is_none()) return Value(concat_form(l) + concat_form(r));
      raise(str("cannot apply '", op, "' to an undefined value (",
                l.is_undefined() ? "left" : "right", " side)"));
    }
    if (l.is_none() || r.is_none()) raise(str("cannot apply '", op, "' to none"));
    if (op == "~") return Value(concat_form(l) + concat_form(r));
    if (op == "**") {
      auto num = [](const Value& v) {
        return v.kind() == K::boolean ? double(v.as_bool()) : v.as_double();
      };
      if ((l.is_number() || l.kind() == K::boolean) && (r.is_number() || r.kind() == K::boolean)) {
        const double a = num(l), b = num(r), p = std::pow(a, b);
        if (a == 0 && b < 0) raise("0 cannot be raised to a negative power");
        if (l.kind() == K::floating || r.kind() == K::floating || b < 0) return Value(p);
        return Value(int64_t(p));
      }
    }
    if (l.is_list() && r.is_list() && op == "+") {
      List out = l.as_list();
      for (const Value& v : r.as_list()) out.push_back(v);
      return Value(std::move(out));
    }
    if (r.is_list() && (op == "in" || op == "not in")) {
      bool found = false;
      for (const Value& v : r.as_list()) found = found || strict_equal(v, l);
      return Value(found == (op == "in"));
    }
    if ((l.is_string() || r.is_string()) && op == "+")
      return Value(concat_form(l) + concat_form(r));
    if (l.is_string() && r.is_string()) {
      const std::string &a = l.as_string(), &b = r.as_string();
      if (op == "in" || op == "not in")
        return Value((b.find(a) != std::string::npos) == (op == "in"));
      if (op == "<") return Value(a < b);
      if (op == ">") return Value(a > b);
      if (op == "<=") return Value(a <= b);
      if (op == ">=") return Value(a >= b);
    }
    if (l.is_string() && r.is_map() && (op == "in" || op == "not in"))
      return Value((r.find(l.as_string()) != nullptr) == (op == "in"));
    raise(
        str("unsupported operator '", op, "' between a ", l.type_name(), " and a ", r.type_name()));
  }

  Value apply_filter(const Node& f, const Value& v, const ScopePtr& env) {
    Args a;
    if (f.flag) a = eval_args(f.args, env);
    FilterCall call{f.str, f.flag, v, a};
    if (f.str == "selectattr" || f.str == "rejectattr") {
      for (const NodePtr& p : f.args)
        if (p->kind != NodeKind::literal || !p->value.is_string())
          raise(str("the arguments of '", f.str, "' must be string literals"));
    }
    return run_filter(call);
  }

  const std::string& source_;
};

Value global_range(const Args& a) {
  if (a.pos.empty()) raise("range() needs at least one argument");
  for (const Value& v : a.pos)
    if (v.kind() != Value::Kind::integer) raise("range() arguments must be integers");
  int64_t start = 0, stop, step = 1;
  if (a.pos.size() == 1) {
    stop = a.pos[0].as_int();
  } else {
    start = a.pos[0].as_int(), stop = a.pos[1].as_int();
    if (a.pos.size() > 2) step = a.pos[2].as_int();
  }
  if (step == 0) raise("range() step must not be zero");
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    out.push_back(Value(i));
    if (out.size() > (1u << 24)) raise("range() is too long");
  }
  return Value(std::move(out));
}

Value global_namespace(const Args& a) {
  Map m;
  if (a.pos.size() > 1) raise("namespace() takes at most one positional argument");
  if (!a.pos.empty()) {
    if (!a.pos[0].is_map()) raise("namespace() takes a dict and keyword arguments");
    m = a.pos[0].as_map();
  }
  for (const auto& [k, v] : a.kw) {
    bool found = false;
    for (auto& [mk, mv] : m)
      if (mk == k) mv = v, found = true;
    if (!found) m.emplace_back(k, v);
  }
  return Value::namespace_of(std::move(m));
}

Value global_strftime_now(const Args& a) {
  const Value fmt = arg(a, 0, "format");
  if (!fmt.is_string()) raise("strftime_now() needs a format string");
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[256];
  const size_t n = std::strftime(buf, sizeof buf, fmt.as_string().c_str(), &tm);
  return Value(std::string(buf, n));
}

}  // namespace

Template Template::parse(std::string_view text) {
  Template t;
  t.source_ = std::make_shared<const std::string>(text);
  t.root_ = parse_template(*t.source_);
  return t;
}

std::string Template::render(const Map& vars) const {
  auto globals = std::make_shared<Scope>();
  globals->set("true", Value(true));
  globals->set("false", Value(false));
  globals->set("none", Value::none());
  globals->set("True", Value(true));
  globals->set("False", Value(false));
  globals->set("None", Value::none());
  globals->set("range", Value::function(global_range));
  globals->set("namespace", Value::function(global_namespace));
  globals->set("strftime_now", Value::function(global_strftime_now));
  globals->set("raise_exception", Value::function([](const Args& a) -> Value {
                 const Value msg = arg(a, 0, "message");
                 raise("the template raised an error: " + to_output(msg));
               }));
  for (const auto& [k, v] : vars) globals->set(k, v);
  Interp in(*source_);
  std::string out;
  try {
    in.block(root_->body, child(globals), out);
  } catch (const BreakSignal&) {
    fail("chat_template", "{% break %} outside a for loop");
  } catch (const ContinueSignal&) {
    fail("chat_template", "{% continue %} outside a for loop");
  }
  return out;
}

}  // namespace kiln::jinja

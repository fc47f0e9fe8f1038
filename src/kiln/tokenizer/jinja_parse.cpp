// Template text -> syntax tree. The preprocessing and lexing rules are @huggingface/jinja's
// (lexer.ts) so that whitespace comes out byte for byte the same: a final newline dropped,
// lstrip_blocks, trim_blocks, then {%- -%} stripping while lexing.
#include <charconv>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/tokenizer/jinja_ast.h"

namespace kiln::jinja {
namespace {

// The preprocessed text and, for each of its bytes, the byte of the original it came from.
struct Source {
  std::string text;
  std::vector<size_t> origin;
  void put(char ch, size_t from) { text.push_back(ch), origin.push_back(from); }
};

bool is_line_start(const std::string& s, size_t i) {
  if (i == 0) return true;
  if (s[i - 1] == '\n' || s[i - 1] == '\r') return true;
  // U+2028 / U+2029 also end a line for JS's multiline ^
  return i >= 3 && std::memcmp(&s[i - 3], "\xE2\x80", 2) == 0 &&
         (s[i - 1] == '\xA8' || s[i - 1] == '\xA9');
}

// Jinja's default (drop one final newline) plus transformers' lstrip_blocks and trim_blocks,
// as the regexes /^[ \t]*({[#%-])/gm -> "$1" and /([#%-]})\n/g -> "$1" apply them, then the
// transformers-only {% generation %} / {% endgeneration %} tags removed.
Source preprocess(const std::string& in) {
  size_t n = in.size();
  if (n > 0 && in[n - 1] == '\n') --n;
  Source a;  // after lstrip_blocks
  for (size_t i = 0; i < n;) {
    if (is_line_start(in, i)) {
      size_t j = i;
      while (j < n && (in[j] == ' ' || in[j] == '\t')) ++j;
      if (j > i && j + 1 < n && in[j] == '{' && std::strchr("#%-", in[j + 1])) i = j;
    }
    a.put(in[i], i);
    ++i;
  }
  Source b;  // after trim_blocks
  const std::string& s = a.text;
  for (size_t i = 0; i < s.size(); ++i) {
    b.put(s[i], a.origin[i]);
    if (i + 2 < s.size() && std::strchr("#%-", s[i]) && s[i + 1] == '}' && s[i + 2] == '\n') {
      b.put(s[i + 1], a.origin[i + 1]);
      i += 2;  // skip the newline
    }
  }
  // {%-? \s* (end)?generation \s* -?%} (\s*)
  Source c;
  const std::string& t = b.text;
  size_t last = 0;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    if (t[i] != '{' || t[i + 1] != '%') continue;
    size_t j = i + 2;
    const bool lstrip = j < t.size() && t[j] == '-';
    if (lstrip) ++j;
    while (size_t k = space_at(t, j)) j += k;
    if (t.compare(j, 3, "end") == 0) j += 3;
    if (t.compare(j, 10, "generation") != 0) continue;
    j += 10;
    while (size_t k = space_at(t, j)) j += k;
    const bool rstrip = j < t.size() && t[j] == '-';
    if (rstrip) ++j;
    if (t.compare(j, 2, "%}") != 0) continue;
    j += 2;
    size_t end = i;
    if (lstrip)
      while (end > last && space_before(t, end)) end -= space_before(t, end);
    for (size_t k = last; k < end; ++k) c.put(t[k], b.origin[k]);
    size_t after = j;
    while (size_t k = space_at(t, after)) after += k;
    if (!rstrip)
      for (size_t k = j; k < after; ++k) c.put(t[k], b.origin[k]);
    last = after;
    i = after - 1;
  }
  for (size_t k = last; k < t.size(); ++k) c.put(t[k], b.origin[k]);
  c.origin.push_back(in.size());  // the end of the text
  return c;
}

enum class Tok {
  text,
  number,
  string,
  ident,
  equals,
  lparen,
  rparen,
  open_stmt,
  close_stmt,
  open_expr,
  close_expr,
  lbracket,
  rbracket,
  lbrace,
  rbrace,
  comma,
  dot,
  colon,
  pipe,
  additive,
  multiplicative,
  power,
  comparison,
  unary,
  comment
};

struct Token {
  Tok t;
  std::string v;
  size_t pos;  // in the preprocessed text
};

bool is_digit(char ch) {
  return ch >= '0' && ch <= '9';
}
bool is_word(char ch) {
  return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

class Lexer {
 public:
  Lexer(const Source& src, const std::string& original)
      : s_(src.text), src_(src), orig_(original) {}

  std::vector<Token> run() {
    while (i_ < s_.size()) step();
    return std::move(toks_);
  }

  [[noreturn]] void error(size_t pos, const std::string& what) const {
    fail("chat_template", position_of(orig_, src_.origin[std::min(pos, s_.size())]), ": ", what);
  }

 private:
  void push(Tok t, std::string v, size_t pos) { toks_.push_back({t, std::move(v), pos}); }
  bool last_is(Tok t) const { return !toks_.empty() && toks_.back().t == t; }

  void strip_trailing_space() {
    if (toks_.empty() || toks_.back().t != Tok::text) return;
    std::string& v = toks_.back().v;
    v = trim(v, false, true);
    if (v.empty()) toks_.pop_back();
  }
  void skip_space() {
    while (size_t k = space_at(s_, i_)) i_ += k;
  }
  // Consumes while `pred`; running off the end inside a tag is an error (as in the reference).
  template <typename P>
  std::string consume_while(P pred) {
    const size_t start = i_;
    while (i_ < s_.size() && pred(i_)) {
      i_ += std::max<size_t>(1, space_at(s_, i_));
      if (i_ >= s_.size()) error(start, "unexpected end of the template inside a tag");
    }
    return s_.substr(start, i_ - start);
  }

  void step() {
    const bool text_mode = toks_.empty() || last_is(Tok::close_stmt) || last_is(Tok::close_expr) ||
                           last_is(Tok::comment);
    if (text_mode) {
      size_t end = i_;
      while (true) {
        end = s_.find('{', end);
        if (end == std::string::npos) {
          end = s_.size();
          break;
        }
        const char next = end + 1 < s_.size() ? s_[end + 1] : 0;
        if (next == '%' || next == '{' || next == '#') break;
        ++end;
      }
      if (end > i_) {
        push(Tok::text, s_.substr(i_, end - i_), i_);
        i_ = end;
        return;
      }
    }
    const size_t start = i_;
    if (s_[i_] == '{') {
      const char next = i_ + 1 < s_.size() ? s_[i_ + 1] : 0;
      if (next == '#') {
        i_ += 2;
        const bool strip_before = i_ < s_.size() && s_[i_] == '-';
        if (strip_before) ++i_;
        const size_t end = s_.find("#}", i_);
        if (end == std::string::npos) error(start, "a comment '{#' is never closed with '#}'");
        std::string comment = s_.substr(i_, end - i_);
        const bool strip_after = !comment.empty() && comment.back() == '-';
        if (strip_before) strip_trailing_space();
        push(Tok::comment, comment, start);
        i_ = end + 2;
        if (strip_after) skip_space();
        return;
      }
      if (i_ + 2 < s_.size() && s_[i_ + 2] == '-' && (next == '%' || next == '{')) {
        strip_trailing_space();
        push(next == '%' ? Tok::open_stmt : Tok::open_expr, next == '%' ? "{%" : "{{", start);
        if (next == '{') depth_ = 0;
        i_ += 3;
        return;
      }
    }
    consume_while([&](size_t k) { return space_at(s_, k) > 0; });
    const size_t pos = i_;
    const char ch = s_[i_];
    auto at = [&](size_t k) { return i_ + k < s_.size() ? s_[i_ + k] : '\0'; };
    if (ch == '-' && at(2) == '}' && (at(1) == '%' || at(1) == '}')) {
      push(at(1) == '%' ? Tok::close_stmt : Tok::close_expr, at(1) == '%' ? "%}" : "}}", pos);
      i_ += 3;
      skip_space();
      return;
    }
    if (ch == '-' || ch == '+') {
      if (toks_.empty() || last_is(Tok::text)) error(pos, str("unexpected '", ch, "'"));
      const Tok lt = toks_.back().t;
      const bool binary = lt == Tok::ident || lt == Tok::number || lt == Tok::string ||
                          lt == Tok::rparen || lt == Tok::rbracket;
      if (!binary) {
        ++i_;
        std::string num = consume_while([&](size_t k) { return is_digit(s_[k]); });
        if (!num.empty() && at(0) == '.' && is_digit(at(1))) {
          ++i_;
          num += "." + consume_while([&](size_t k) { return is_digit(s_[k]); });
        }
        if (num.empty())
          push(Tok::unary, std::string(1, ch), pos);
        else
          push(Tok::number, std::string(1, ch) + num, pos);
        return;
      }
    }
    struct Rule {
      const char* seq;
      Tok t;
    };
    static const Rule rules[] = {{"{%", Tok::open_stmt},     {"%}", Tok::close_stmt},
                                 {"{{", Tok::open_expr},     {"}}", Tok::close_expr},
                                 {"(", Tok::lparen},         {")", Tok::rparen},
                                 {"{", Tok::lbrace},         {"}", Tok::rbrace},
                                 {"[", Tok::lbracket},       {"]", Tok::rbracket},
                                 {",", Tok::comma},          {".", Tok::dot},
                                 {":", Tok::colon},          {"|", Tok::pipe},
                                 {"<=", Tok::comparison},    {">=", Tok::comparison},
                                 {"==", Tok::comparison},    {"!=", Tok::comparison},
                                 {"<", Tok::comparison},     {">", Tok::comparison},
                                 {"+", Tok::additive},       {"-", Tok::additive},
                                 {"~", Tok::additive},       {"**", Tok::power},
                                 {"*", Tok::multiplicative}, {"//", Tok::multiplicative},
                                 {"/", Tok::multiplicative}, {"%", Tok::multiplicative},
                                 {"=", Tok::equals}};
    for (const Rule& r : rules) {
      if (r.t == Tok::close_expr && depth_ > 0) continue;
      if (s_.compare(i_, std::strlen(r.seq), r.seq) != 0) continue;
      push(r.t, r.seq, pos);
      if (r.t == Tok::open_expr) depth_ = 0;
      if (r.t == Tok::lbrace) ++depth_;
      if (r.t == Tok::rbrace) --depth_;
      i_ += std::strlen(r.seq);
      return;
    }
    if (ch == '\'' || ch == '"') {
      ++i_;
      push(Tok::string, read_string(ch, pos), pos);
      ++i_;
      return;
    }
    if (is_digit(ch)) {
      std::string num = consume_while([&](size_t k) { return is_digit(s_[k]); });
      if (!last_is(Tok::dot) && at(0) == '.' && is_digit(at(1))) {
        ++i_;
        num += "." + consume_while([&](size_t k) { return is_digit(s_[k]); });
      }
      push(Tok::number, num, pos);
      return;
    }
    if (is_word(ch)) {
      push(Tok::ident, consume_while([&](size_t k) { return is_word(s_[k]); }), pos);
      return;
    }
    error(pos, str("unexpected character '", ch, "'"));
  }

  std::string read_string(char quote, size_t pos) {
    std::string out;
    while (true) {
      if (i_ >= s_.size()) error(pos, "a string is never closed");
      const char ch = s_[i_];
      if (ch == quote) return out;
      ++i_;
      if (ch != '\\') {
        out.push_back(ch);
        continue;
      }
      if (i_ >= s_.size()) error(pos, "a string is never closed");
      const char e = s_[i_++];
      if (e == 'x' || e == 'u') {
        const size_t len = e == 'x' ? 2 : 4;
        unsigned cp = 0;
        auto r = std::from_chars(s_.data() + i_, s_.data() + std::min(s_.size(), i_ + len), cp, 16);
        if (r.ptr != s_.data() + i_ + len) error(i_ - 2, "invalid hexadecimal escape");
        i_ += len;
        append_utf8(out, cp);
        continue;
      }
      static const char* from = "ntrbfv'\"\\";
      static const char* to = "\n\t\r\b\f\v'\"\\";
      const char* f = std::strchr(from, e);
      if (!f || e == 0) error(i_ - 2, str("unknown escape '\\", e, "' in a string"));
      out.push_back(to[f - from]);
    }
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out.push_back(char(cp));
    } else if (cp < 0x800) {
      out.push_back(char(0xC0 | (cp >> 6)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(char(0xE0 | (cp >> 12)));
      out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(char(0x80 | (cp & 0x3F)));
    }
  }

  const std::string& s_;
  const Source& src_;
  const std::string& orig_;
  size_t i_ = 0;
  int depth_ = 0;  // '{' nesting inside an expression, where "}}" does not close it
  std::vector<Token> toks_;
};

NodePtr make(NodeKind k, size_t pos) {
  auto n = std::make_shared<Node>();
  n->kind = k;
  n->pos = pos;
  return n;
}

// Recursive descent with @huggingface/jinja's precedence (parser.ts), lowest first:
// ternary, or, and, not, comparison / in, + - ~, * / // %, **, is-tests, |filters, unary +-,
// member access and calls, primary.
class Parser {
 public:
  Parser(std::vector<Token> toks, const Lexer& lex) : t_(std::move(toks)), lex_(lex) {}

  NodePtr program() {
    auto root = make(NodeKind::text, 0);  // a block: its body is the program
    while (i_ < t_.size()) root->body.push_back(any());
    return root;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    lex_.error(i_ < t_.size() ? t_[i_].pos : (t_.empty() ? 0 : t_.back().pos + 1), what);
  }
  bool is(Tok t, size_t k = 0) const { return i_ + k < t_.size() && t_[i_ + k].t == t; }
  bool is_ident(const char* name, size_t k = 0) const {
    return is(Tok::ident, k) && t_[i_ + k].v == name;
  }
  bool is_statement(std::initializer_list<const char*> names) const {
    if (!is(Tok::open_stmt) || !is(Tok::ident, 1)) return false;
    for (const char* n : names)
      if (t_[i_ + 1].v == n) return true;
    return false;
  }
  const Token& expect(Tok t, const char* what) {
    if (!is(t)) error(str("expected ", what));
    return t_[i_++];
  }
  void expect_ident(const char* name) {
    if (!is_ident(name)) error(str("expected '", name, "'"));
    ++i_;
  }
  void expect_end(const char* name) {
    expect(Tok::open_stmt, str("'{% ", name, " %}'").c_str());
    expect_ident(name);
    expect(Tok::close_stmt, "'%}'");
  }
  // Parses statements into `out` until one of `names` opens ({% name ...); a missing end tag
  // names the block that is left open.
  void block_until(Nodes& out, std::initializer_list<const char*> names, const char* open,
                   size_t open_pos) {
    while (!is_statement(names)) {
      if (i_ >= t_.size()) lex_.error(open_pos, str("'{% ", open, " %}' is never closed"));
      out.push_back(any());
    }
  }

  NodePtr any() {
    const Token& tok = t_[i_];
    switch (tok.t) {
      case Tok::comment: {
        ++i_;
        return make(NodeKind::text, tok.pos);  // renders nothing
      }
      case Tok::text: {
        auto n = make(NodeKind::text, tok.pos);
        n->str = tok.v;
        ++i_;
        return n;
      }
      case Tok::open_stmt:
        return statement();
      case Tok::open_expr: {
        ++i_;
        NodePtr e = expression();
        expect(Tok::close_expr, "'}}'");
        return e;
      }
      default:
        error("unexpected token");
    }
  }

  NodePtr statement() {
    ++i_;  // {%
    if (!is(Tok::ident)) error("expected a statement name after '{%'");
    const size_t pos = t_[i_].pos;
    const std::string name = t_[i_++].v;
    NodePtr n;
    if (name == "set") {
      n = make(NodeKind::set, pos);
      n->a = sequence(false);
      if (is(Tok::equals)) {
        ++i_;
        n->b = sequence(false);
      } else {
        expect(Tok::close_stmt, "'%}'");
        block_until(n->body, {"endset"}, "set", pos);
        ++i_, ++i_;
      }
      expect(Tok::close_stmt, "'%}'");
    } else if (name == "if") {
      n = if_rest(pos);
      expect_end("endif");
    } else if (name == "for") {
      n = make(NodeKind::for_, pos);
      n->a = sequence(true);
      if (n->a->kind != NodeKind::ident && n->a->kind != NodeKind::tuple)
        lex_.error(pos, "expected a name or a tuple of names after 'for'");
      expect_ident("in");
      NodePtr it = expression();
      if (it->kind == NodeKind::select) {  // for x in xs if cond
        n->b = it->a;
        n->c = it->b;
      } else {
        n->b = it;
      }
      expect(Tok::close_stmt, "'%}'");
      block_until(n->body, {"endfor", "else"}, "for", pos);
      if (is_statement({"else"})) {
        i_ += 2;
        expect(Tok::close_stmt, "'%}'");
        block_until(n->alt, {"endfor"}, "for", pos);
      }
      expect_end("endfor");
    } else if (name == "macro") {
      n = make(NodeKind::macro, pos);
      n->str = expect(Tok::ident, "a macro name").v;
      n->args = call_args();
      for (const NodePtr& p : n->args)
        if (p->kind != NodeKind::ident && p->kind != NodeKind::kwarg)
          lex_.error(p->pos, "a macro parameter must be a name or name=default");
      expect(Tok::close_stmt, "'%}'");
      block_until(n->body, {"endmacro"}, "macro", pos);
      expect_end("endmacro");
    } else if (name == "filter") {
      n = make(NodeKind::filter_block, pos);
      n->a = make(NodeKind::filter, pos);
      n->a->str = expect(Tok::ident, "a filter name").v;
      if (is(Tok::lparen)) n->a->args = call_args(), n->a->flag = true;
      expect(Tok::close_stmt, "'%}'");
      block_until(n->body, {"endfilter"}, "filter", pos);
      expect_end("endfilter");
    } else if (name == "break" || name == "continue") {
      n = make(name == "break" ? NodeKind::break_ : NodeKind::continue_, pos);
      expect(Tok::close_stmt, "'%}'");
    } else {
      lex_.error(pos, str("unknown or unsupported statement '{% ", name, " %}'"));
    }
    return n;
  }

  NodePtr if_rest(size_t pos) {
    auto n = make(NodeKind::if_, pos);
    n->a = expression();
    expect(Tok::close_stmt, "'%}'");
    block_until(n->body, {"elif", "else", "endif"}, "if", pos);
    if (is_statement({"elif"})) {
      const size_t p = t_[i_ + 1].pos;
      i_ += 2;
      n->alt.push_back(if_rest(p));
    } else if (is_statement({"else"})) {
      i_ += 2;
      expect(Tok::close_stmt, "'%}'");
      block_until(n->alt, {"endif"}, "if", pos);
    }
    return n;
  }

  // a, b, c -> tuple; `primary` for the names of a for loop.
  NodePtr sequence(bool primary) {
    const size_t pos = i_ < t_.size() ? t_[i_].pos : 0;
    NodePtr first = primary ? this->primary() : expression();
    if (!is(Tok::comma)) return first;
    auto tup = make(NodeKind::tuple, pos);
    tup->args.push_back(first);
    while (is(Tok::comma)) {
      ++i_;
      tup->args.push_back(primary ? this->primary() : expression());
    }
    return tup;
  }

  NodePtr expression() {
    NodePtr a = logical_or();
    if (!is_ident("if")) return a;
    const size_t pos = t_[i_].pos;
    ++i_;
    NodePtr test = logical_or();
    if (is_ident("else")) {
      ++i_;
      auto n = make(NodeKind::ternary, pos);
      n->a = test, n->b = a, n->c = expression();
      return n;
    }
    auto n = make(NodeKind::select, pos);
    n->a = a, n->b = test;
    return n;
  }

  NodePtr binary(std::string op, size_t pos, NodePtr l, NodePtr r) {
    auto n = make(NodeKind::binary, pos);
    n->str = std::move(op), n->a = std::move(l), n->b = std::move(r);
    return n;
  }

  NodePtr logical_or() {
    NodePtr l = logical_and();
    while (is_ident("or")) {
      const size_t pos = t_[i_++].pos;
      l = binary("or", pos, l, logical_and());
    }
    return l;
  }
  NodePtr logical_and() {
    NodePtr l = logical_not();
    while (is_ident("and")) {
      const size_t pos = t_[i_++].pos;
      l = binary("and", pos, l, logical_not());
    }
    return l;
  }
  NodePtr logical_not() {
    if (!is_ident("not")) return comparison();
    auto n = make(NodeKind::unary, t_[i_++].pos);
    n->str = "not";
    n->a = logical_not();
    return n;
  }
  NodePtr comparison() {
    NodePtr l = additive();
    while (true) {
      if (i_ >= t_.size()) return l;
      const size_t pos = t_[i_].pos;
      std::string op;
      if (is_ident("not") && is_ident("in", 1)) {
        op = "not in", i_ += 2;
      } else if (is_ident("in") || is(Tok::comparison)) {
        op = t_[i_++].v;
      } else {
        return l;
      }
      l = binary(op, pos, l, additive());
    }
  }
  NodePtr additive() {
    NodePtr l = multiplicative();
    while (is(Tok::additive)) {
      const Token& op = t_[i_++];
      l = binary(op.v, op.pos, l, multiplicative());
    }
    return l;
  }
  NodePtr multiplicative() {
    NodePtr l = power();
    while (is(Tok::multiplicative)) {
      const Token& op = t_[i_++];
      l = binary(op.v, op.pos, l, power());
    }
    return l;
  }
  NodePtr power() {
    NodePtr l = test();
    while (is(Tok::power)) {
      const Token& op = t_[i_++];
      l = binary(op.v, op.pos, l, test());
    }
    return l;
  }
  NodePtr test() {
    NodePtr operand = filter();
    while (is_ident("is")) {
      auto n = make(NodeKind::test, t_[i_++].pos);
      if (is_ident("not")) n->flag = true, ++i_;
      n->str = expect(Tok::ident, "a test name after 'is'").v;
      n->a = operand;
      operand = n;
    }
    return operand;
  }
  NodePtr filter() {
    NodePtr operand = unary_sign();
    while (is(Tok::pipe)) {
      ++i_;
      auto n = make(NodeKind::filter, i_ < t_.size() ? t_[i_].pos : 0);
      n->str = expect(Tok::ident, "a filter name after '|'").v;
      n->a = operand;
      if (is(Tok::lparen)) n->args = call_args(), n->flag = true;
      operand = n;
    }
    return operand;
  }
  NodePtr unary_sign() {
    if ((is(Tok::unary) || is(Tok::additive)) && (t_[i_].v == "-" || t_[i_].v == "+")) {
      auto n = make(NodeKind::unary, t_[i_].pos);
      n->str = t_[i_++].v;
      n->a = unary_sign();
      return n;
    }
    return call_member();
  }
  NodePtr call_member() {
    NodePtr e = member(primary());
    while (is(Tok::lparen)) {
      auto n = make(NodeKind::call, e->pos);  // errors point at the callee's name
      n->a = e;
      n->args = call_args();
      e = member(n);
    }
    return e;
  }
  // ( arg, name=value, ... )
  Nodes call_args() {
    expect(Tok::lparen, "'('");
    Nodes out;
    while (!is(Tok::rparen)) {
      if (i_ >= t_.size()) error("expected ')'");
      if (is(Tok::multiplicative) || is(Tok::power))
        error("argument unpacking (*args, **kwargs) is not supported");
      if (is(Tok::ident) && is(Tok::equals, 1)) {
        auto kw = make(NodeKind::kwarg, t_[i_].pos);
        kw->str = t_[i_].v;
        i_ += 2;
        kw->a = expression();
        out.push_back(kw);
      } else {
        out.push_back(expression());
      }
      if (is(Tok::comma))
        ++i_;
      else if (!is(Tok::rparen))
        error("expected ',' or ')' in an argument list");
    }
    ++i_;
    return out;
  }
  NodePtr member(NodePtr obj) {
    while (is(Tok::dot) || is(Tok::lbracket)) {
      const bool computed = is(Tok::lbracket);
      auto n = make(NodeKind::member, t_[i_++].pos);
      n->a = obj;
      if (computed) {
        n->b = subscript();
        expect(Tok::rbracket, "']'");
      } else {
        NodePtr p = primary();
        if (p->kind == NodeKind::ident) {
          n->b = make(NodeKind::literal, p->pos);
          n->b->value = Value(p->str);
        } else if (p->kind == NodeKind::literal && p->value.kind() == Value::Kind::integer) {
          n->b = p;
        } else {
          lex_.error(p->pos, "expected a name or an integer after '.'");
        }
      }
      obj = n;
    }
    return obj;
  }
  // The inside of [...]: an expression or a slice start:stop:step.
  NodePtr subscript() {
    const size_t pos = i_ < t_.size() ? t_[i_].pos : 0;
    NodePtr parts[3];
    int k = 0;
    bool is_slice = false;
    while (!is(Tok::rbracket)) {
      if (i_ >= t_.size()) error("expected ']'");
      if (is(Tok::colon)) {
        is_slice = true;
        if (++k > 2) error("a slice has at most start:stop:step");
        ++i_;
      } else {
        parts[k] = expression();
      }
    }
    if (!is_slice) {
      if (!parts[0]) error("expected an index inside '[]'");
      return parts[0];
    }
    auto n = make(NodeKind::slice, pos);
    n->a = parts[0], n->b = parts[1], n->c = parts[2];
    return n;
  }
  NodePtr primary() {
    if (i_ >= t_.size()) error("unexpected end of the template inside a tag");
    const Token& tok = t_[i_++];
    switch (tok.t) {
      case Tok::number: {
        auto n = make(NodeKind::literal, tok.pos);
        if (tok.v.find('.') != std::string::npos) {
          n->value = Value(std::stod(tok.v));
        } else {
          int64_t v = 0;
          std::from_chars(tok.v.data() + (tok.v[0] == '+'), tok.v.data() + tok.v.size(), v);
          n->value = Value(v);
        }
        return n;
      }
      case Tok::string: {
        auto n = make(NodeKind::literal, tok.pos);
        std::string v = tok.v;
        while (is(Tok::string)) v += t_[i_++].v;  // "a" "b" concatenates
        n->value = Value(std::move(v));
        return n;
      }
      case Tok::ident: {
        auto n = make(NodeKind::ident, tok.pos);
        n->str = tok.v;
        return n;
      }
      case Tok::lparen: {
        NodePtr e = sequence(false);
        expect(Tok::rparen, "')'");
        return e;
      }
      case Tok::lbracket: {
        auto n = make(NodeKind::list, tok.pos);
        while (!is(Tok::rbracket)) {
          if (i_ >= t_.size()) error("expected ']'");
          n->args.push_back(expression());
          if (is(Tok::comma)) ++i_;
        }
        ++i_;
        return n;
      }
      case Tok::lbrace: {
        auto n = make(NodeKind::dict, tok.pos);
        while (!is(Tok::rbrace)) {
          if (i_ >= t_.size()) error("expected '}'");
          n->args.push_back(expression());
          expect(Tok::colon, "':' between a key and its value");
          n->args.push_back(expression());
          if (is(Tok::comma)) ++i_;
        }
        ++i_;
        return n;
      }
      default:
        --i_;
        error(str("unexpected '", tok.v, "'"));
    }
  }

  std::vector<Token> t_;
  const Lexer& lex_;
  size_t i_ = 0;
};

}  // namespace

std::string position_of(const std::string& text, size_t pos) {
  pos = std::min(pos, text.size());
  size_t line = 1, col = 1;
  for (size_t k = 0; k < pos; ++k) {
    if (text[k] == '\n')
      ++line, col = 1;
    else if ((text[k] & 0xC0) != 0x80)
      ++col;
  }
  return str("line ", line, ", column ", col);
}

NodePtr parse_template(const std::string& text) {
  const Source src = preprocess(text);
  Lexer lex(src, text);
  std::vector<Token> toks = lex.run();
  // Token positions are in the preprocessed text; the lexer maps them back for messages.
  return Parser(std::move(toks), lex).program();
}

}  // namespace kiln::jinja

#include "kiln/tokenizer/standard_split.h"

#include <algorithm>
#include <array>
#include <memory>

#include "kiln/tokenizer/work.h"

namespace kiln::tok {

namespace {

struct Run {
  uint32_t first;
  uint8_t cls;
};
constexpr Run kRuns[] = {
#include "kiln/tokenizer/unicode_table.inc"
};

// The Basic Multilingual Plane in a direct table (64 kB); the rest by binary search.
const std::array<CharClass, 0x10000>& bmp_table() {
  static const auto table = [] {
    auto t = std::make_unique<std::array<CharClass, 0x10000>>();
    size_t r = 0;
    for (uint32_t cp = 0; cp < 0x10000; ++cp) {
      while (r + 1 < std::size(kRuns) && kRuns[r + 1].first <= cp) ++r;
      (*t)[cp] = CharClass(kRuns[r].cls);
    }
    return t;
  }();
  return *table;
}

// Decoded text: class and code point per character, byte offsets (off[n] = text size).
struct Chars {
  std::vector<CharClass> cls;
  std::vector<uint32_t> cp;
  std::vector<uint32_t> off;
  size_t n = 0;
};

void decode(std::string_view s, Chars& c) {
  const auto& bmp = bmp_table();
  const size_t size = s.size();
  // Sized for the worst case (one byte per character), written through raw pointers.
  if (c.cls.size() < size + 1) {
    c.cls.resize(size + 1);
    c.cp.resize(size + 1);
    c.off.resize(size + 1);
  }
  CharClass* cls = c.cls.data();
  uint32_t* cps = c.cp.data();
  uint32_t* off = c.off.data();
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t k = 0;
  for (size_t i = 0; i < size;) {
    uint32_t b = p[i], cp = 0;
    size_t len = 0;
    if (b < 0x80) {
      cls[k] = bmp[b];
      cps[k] = b;
      off[k++] = uint32_t(i++);
      continue;
    }
    if (b >= 0xC2 && b < 0xE0 && i + 1 < size && (p[i + 1] & 0xC0) == 0x80) {
      cp = (b & 0x1F) << 6 | (p[i + 1] & 0x3F);
      len = 2;
    } else if (b >= 0xE0 && b < 0xF0 && i + 2 < size && (p[i + 1] & 0xC0) == 0x80 &&
               (p[i + 2] & 0xC0) == 0x80) {
      cp = (b & 0x0F) << 12 | (p[i + 1] & 0x3F) << 6 | (p[i + 2] & 0x3F);
      len = (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ? 3 : 0;
    } else if (b >= 0xF0 && b < 0xF5 && i + 3 < size && (p[i + 1] & 0xC0) == 0x80 &&
               (p[i + 2] & 0xC0) == 0x80 && (p[i + 3] & 0xC0) == 0x80) {
      cp = (b & 0x07) << 18 | (p[i + 1] & 0x3F) << 12 | (p[i + 2] & 0x3F) << 6 | (p[i + 3] & 0x3F);
      len = (cp >= 0x10000 && cp <= 0x10FFFF) ? 4 : 0;
    }
    off[k] = uint32_t(i);
    if (len == 0) {  // an invalid byte: a character of its own that no class matches
      cls[k] = CharClass::invalid;
      cps[k++] = 0xFFFFFFFF;
      i += 1;
      continue;
    }
    cls[k] = cp < 0x10000 ? bmp[cp] : char_class(cp);
    cps[k++] = cp;
    i += len;
  }
  c.n = k;
  off[k] = uint32_t(size);
}

bool is_letter(CharClass c) {
  return c >= CharClass::lu && c <= CharClass::lo;
}
bool is_number(CharClass c) {
  return c == CharClass::number;
}
bool is_space(CharClass c) {
  return c == CharClass::space;
}
// [^\s\p{L}\p{N}]: marks count as "other" here.
bool is_other(CharClass c) {
  return c == CharClass::other || c == CharClass::mark;
}
// o200k's upper-ish [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and lower-ish [\p{Ll}\p{Lm}\p{Lo}\p{M}].
bool is_upper(CharClass c) {
  return c == CharClass::lu || c == CharClass::lt || c == CharClass::lm || c == CharClass::lo ||
         c == CharClass::mark;
}
bool is_lower(CharClass c) {
  return c == CharClass::ll || c == CharClass::lm || c == CharClass::lo || c == CharClass::mark;
}

struct Splitter {
  const Chars& c;
  size_t n;
  mutable uint64_t work = 0;  // characters examined (EncodeWork::split)

  template <typename F>
  size_t run(size_t k, F pred) const {
    size_t start = k;
    while (k < n && pred(c.cls[k])) ++k;
    work += k - start + 1;
    return k;
  }
  // The end of the run from k, but at most `most` characters (\p{N}{1,3}): a long run costs
  // what the piece takes, not the whole run each time.
  template <typename F>
  size_t run_upto(size_t k, F pred, size_t most) const {
    size_t end = std::min(n, k + most), start = k;
    while (k < end && pred(c.cls[k])) ++k;
    work += k - start + 1;
    return k;
  }
  bool cp_is(size_t k, uint32_t v) const { return k < n && c.cp[k] == v; }
  bool newline(size_t k) const { return cp_is(k, '\r') || cp_is(k, '\n'); }
  // [^\r\n\p{L}\p{N}]
  bool prefix_ok(size_t k) const {
    CharClass x = c.cls[k];
    return x != CharClass::invalid && !is_letter(x) && !is_number(x) && !newline(k);
  }
  // \S at k (a valid, non-space character).
  bool nonspace(size_t k) const {
    return k < n && c.cls[k] != CharClass::invalid && !is_space(c.cls[k]);
  }
  // 's 't 're 've 'm 'll 'd; any letter case unless `lower_only` (GPT-2). Characters used, or 0.
  size_t contraction(size_t k, bool lower_only) const {
    if (!cp_is(k, '\'') || k + 1 >= n) return 0;
    auto low = [&](size_t i) -> uint32_t {
      if (i >= n) return 0;
      uint32_t v = c.cp[i];
      return (!lower_only && v >= 'A' && v <= 'Z') ? v + 32 : v;
    };
    uint32_t a = low(k + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    uint32_t b = low(k + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
  }
  size_t space_run(size_t k) const { return run(k, is_space); }
  // The end of \s+(?!\S) | \s+ from k (a space).
  size_t trailing_space(size_t k) const {
    size_t e = space_run(k);
    if (!nonspace(e)) return e;
    return e - 1 > k ? e - 1 : e;
  }
  // \s*[\r\n] (and \s*[\r\n]+): through the last newline of the space run; 0 if none.
  size_t through_last_newline(size_t k, size_t e) const {
    for (size_t q = e; q > k; --q) {
      ++work;
      if (newline(q - 1)) return q;
    }
    return 0;
  }

  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  size_t gpt2(size_t k) const {
    if (size_t m = contraction(k, true)) return k + m;
    size_t j = k + (cp_is(k, ' ') ? 1 : 0);
    if (j < n) {
      if (is_letter(c.cls[j])) return run(j, is_letter);
      if (is_number(c.cls[j])) return run(j, is_number);
      if (is_other(c.cls[j])) return run(j, is_other);
    }
    return trailing_space(k);
  }

  // cl100k: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|
  //         ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //         ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  // They differ only in whitespace that ends the text: cl100k keeps it whole (\s++$), Llama 3
  // cuts after its last newline.
  size_t cl100k(size_t k, bool llama3) const {
    if (size_t m = contraction(k, false)) return k + m;
    CharClass x = c.cls[k];
    if (is_letter(x)) return run(k, is_letter);
    if (prefix_ok(k) && k + 1 < n && is_letter(c.cls[k + 1])) return run(k + 1, is_letter);
    if (is_number(x)) return run_upto(k, is_number, 3);
    size_t j = k + (cp_is(k, ' ') ? 1 : 0);
    if (j < n && is_other(c.cls[j])) {
      size_t e = run(j, is_other);
      while (newline(e)) ++e;
      return e;
    }
    size_t e = space_run(k);
    if (e == n && !llama3) return e;
    if (size_t q = through_last_newline(k, e)) return q;
    return trailing_space(k);
  }

  // U*W+C? (first alternative) from s; 0 if it does not match.
  size_t o200k_lower(size_t s) const {
    size_t u = run(s, is_upper), start;
    if (u < n && is_lower(c.cls[u])) {
      start = u;
    } else {  // backtrack U* to the last character that W+ can take
      start = u;
      while (start > s && !is_lower(c.cls[start - 1])) --start;
      work += u - start;
      if (start == s) return 0;
      --start;
    }
    size_t e = run(start, is_lower);
    return e + contraction(e, false);
  }
  // U+W*C? (second alternative) from s; 0 if it does not match.
  size_t o200k_upper(size_t s) const {
    if (s >= n || !is_upper(c.cls[s])) return 0;
    size_t e = run(run(s, is_upper), is_lower);
    return e + contraction(e, false);
  }

  // [^\r\n\p{L}\p{N}]?U*W+C?|[^\r\n\p{L}\p{N}]?U+W*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+      with U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W =
  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
  size_t o200k(size_t k) const {
    bool p = prefix_ok(k);
    if (p && k + 1 < n)
      if (size_t e = o200k_lower(k + 1)) return e;
    if (size_t e = o200k_lower(k)) return e;
    if (p && k + 1 < n)
      if (size_t e = o200k_upper(k + 1)) return e;
    if (size_t e = o200k_upper(k)) return e;
    CharClass x = c.cls[k];
    if (is_number(x)) return run_upto(k, is_number, 3);
    size_t j = k + (cp_is(k, ' ') ? 1 : 0);
    if (j < n && is_other(c.cls[j])) {
      size_t e = run(j, is_other);
      while (newline(e) || cp_is(e, '/')) ++e;
      return e;
    }
    size_t e = space_run(k);
    if (size_t q = through_last_newline(k, e)) return q;
    return trailing_space(k);
  }
};

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x10000) return bmp_table()[cp];
  if (cp > 0x10FFFF) return CharClass::invalid;
  auto it = std::upper_bound(std::begin(kRuns), std::end(kRuns), cp,
                             [](uint32_t v, const Run& r) { return v < r.first; });
  return CharClass((it - 1)->cls);
}

bool has_standard_split(Pattern p) {
  return p == Pattern::gpt2 || p == Pattern::cl100k || p == Pattern::llama3 || p == Pattern::o200k;
}

void split_standard(Pattern p, std::string_view text, std::vector<std::string_view>& pieces) {
  thread_local Chars chars;
  decode(text, chars);
  Splitter s{chars, chars.n};
  const auto& off = chars.off;
  for (size_t k = 0; k < chars.n;) {
    size_t e;
    if (chars.cls[k] == CharClass::invalid) {
      e = k + 1;
      while (e < chars.n && chars.cls[e] == CharClass::invalid) ++e;
    } else if (p == Pattern::gpt2) {
      e = s.gpt2(k);
    } else if (p == Pattern::o200k) {
      e = s.o200k(k);
    } else {
      e = s.cl100k(k, p == Pattern::llama3);
    }
    if (e <= k) e = k + 1;  // never stall (no pattern matches empty)
    pieces.push_back(text.substr(off[k], off[e] - off[k]));
    k = e;
  }
  encode_work().split += s.work + chars.n;
}

}  // namespace kiln::tok

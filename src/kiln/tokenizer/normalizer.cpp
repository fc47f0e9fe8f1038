#include "kiln/tokenizer/normalizer.h"

#include <algorithm>

#include "kiln/tokenizer/standard_split.h"

namespace kiln::tok {

namespace {

#include "kiln/tokenizer/normalization_table.inc"

constexpr uint32_t kBad = 0xFFFFFFFF;  // an invalid UTF-8 byte

uint32_t next_cp(std::string_view t, size_t i, size_t& len) {
  auto b = [&](size_t k) { return uint8_t(t[i + k]); };
  const uint8_t c = b(0);
  len = 1;
  if (c < 0x80) return c;
  auto cont = [&](size_t k) { return i + k < t.size() && (b(k) & 0xC0) == 0x80; };
  if (c >= 0xC2 && c < 0xE0 && cont(1)) {
    len = 2;
    return uint32_t(c & 0x1F) << 6 | (b(1) & 0x3F);
  }
  if (c >= 0xE0 && c < 0xF0 && cont(1) && cont(2)) {
    uint32_t cp = uint32_t(c & 0x0F) << 12 | uint32_t(b(1) & 0x3F) << 6 | (b(2) & 0x3F);
    if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return kBad;
    len = 3;
    return cp;
  }
  if (c >= 0xF0 && c < 0xF5 && cont(1) && cont(2) && cont(3)) {
    uint32_t cp = uint32_t(c & 0x07) << 18 | uint32_t(b(1) & 0x3F) << 12 |
                  uint32_t(b(2) & 0x3F) << 6 | (b(3) & 0x3F);
    if (cp < 0x10000 || cp > 0x10FFFF) return kBad;
    len = 4;
    return cp;
  }
  return kBad;
}

void put_cp(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6);
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | cp >> 12);
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | cp >> 18);
    out += char(0x80 | (cp >> 12 & 0x3F));
    out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Binary search in a {code point, value} table sorted by code point; nullptr if absent.
template <size_t N>
const uint32_t* find_entry(const uint32_t (&table)[N][2], uint32_t cp) {
  auto it = std::lower_bound(std::begin(table), std::end(table), cp,
                             [](const uint32_t(&e)[2], uint32_t c) { return e[0] < c; });
  return it != std::end(table) && (*it)[0] == cp ? *it : nullptr;
}

uint32_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  const uint32_t* e = find_entry(kCombiningClass, cp);
  return e ? e[1] : 0;
}

bool unsafe(UnicodeForm f, uint32_t cp) {
  if (cp < 0xA0 || cp == kBad) return false;  // nothing below U+00A0 changes
  auto it = std::upper_bound(std::begin(kUnsafe), std::end(kUnsafe), cp,
                             [](uint32_t c, const uint32_t(&e)[2]) { return c < e[0]; });
  return ((*(it - 1))[1] >> int(f) & 1) != 0;
}

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {  // Hangul syllable
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + s % kNCount / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const uint32_t* e = compat ? find_entry(kCompatDecomp, cp) : nullptr;
  if (!e) e = find_entry(kCanonDecomp, cp);
  if (!e) {
    out.push_back(cp);
    return;
  }
  out.insert(out.end(), kNormData + (e[1] >> 5), kNormData + (e[1] >> 5) + (e[1] & 31));
}

uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  auto it = std::lower_bound(std::begin(kCompose), std::end(kCompose), std::pair(a, b),
                             [](const uint32_t(&e)[3], std::pair<uint32_t, uint32_t> k) {
                               return std::pair(e[0], e[1]) < k;
                             });
  return it != std::end(kCompose) && (*it)[0] == a && (*it)[1] == b ? (*it)[2] : 0;
}

// Normalizes one segment (a starter and what cannot be cut from it) in place: decomposition,
// canonical reordering, then composition for the C forms.
void normalize_segment(UnicodeForm f, std::vector<uint32_t>& cps, std::vector<uint32_t>& tmp) {
  tmp.clear();
  for (uint32_t cp : cps) decompose(cp, f == UnicodeForm::nfkd || f == UnicodeForm::nfkc, tmp);
  for (size_t i = 1; i < tmp.size(); ++i) {  // stable insertion sort of non-starter runs
    const uint32_t c = ccc(tmp[i]);
    if (c == 0) continue;
    for (size_t j = i; j > 0 && ccc(tmp[j - 1]) > c; --j) std::swap(tmp[j - 1], tmp[j]);
  }
  cps.swap(tmp);
  if (f == UnicodeForm::nfd || f == UnicodeForm::nfkd || cps.empty()) return;
  size_t starter = 0, w = 1;
  uint32_t last = ccc(cps[0]) ? 256 : 0;
  for (size_t i = 1; i < cps.size(); ++i) {
    const uint32_t c = ccc(cps[i]);
    const uint32_t comp = compose_pair(cps[starter], cps[i]);
    if (comp && (last < c || last == 0) && !(last == 0 && w - 1 != starter)) {
      cps[starter] = comp;
      continue;
    }
    if (c == 0) starter = w;
    last = c;
    cps[w++] = cps[i];
  }
  cps.resize(w);
}

}  // namespace

uint32_t utf8_decode(std::string_view text, size_t i, size_t& len) {
  return next_cp(text, i, len);
}

bool unicode_normalize(UnicodeForm f, std::string_view text, std::string& out) {
  size_t i = 0, len = 0, seg = 0;  // seg: where the last safe code point starts
  for (; i < text.size(); i += len) {
    if (uint8_t(text[i]) < 0x80) {
      len = 1;
      seg = i;
      continue;
    }
    const uint32_t cp = next_cp(text, i, len);
    if (unsafe(f, cp)) break;
    seg = i;
  }
  if (i == text.size()) return false;
  out.append(text.substr(0, seg));
  thread_local std::vector<uint32_t> cps, tmp;
  for (i = seg; i < text.size();) {
    // A segment: one code point, then every unsafe one after it.
    cps.clear();
    const size_t start = i;
    uint32_t cp = next_cp(text, i, len);
    if (cp == kBad) {
      out += text[i++];
      continue;
    }
    cps.push_back(cp);
    i += len;
    while (i < text.size() && unsafe(f, cp = next_cp(text, i, len))) {
      cps.push_back(cp);
      i += len;
    }
    if (cps.size() == 1 && !unsafe(f, cps[0])) {
      out.append(text.substr(start, i - start));
      continue;
    }
    normalize_segment(f, cps, tmp);
    for (uint32_t c : cps) put_cp(c, out);
  }
  return true;
}

bool unicode_lowercase(std::string_view text, std::string& out) {
  size_t i = 0, len = 0;
  auto maps = [&](size_t at) {
    const uint8_t c = uint8_t(text[at]);
    if (c < 0x80) {
      len = 1;
      return c >= 'A' && c <= 'Z';
    }
    const uint32_t cp = next_cp(text, at, len);
    return cp != kBad && find_entry(kLowercase, cp) != nullptr;
  };
  while (i < text.size() && !maps(i)) i += len;
  if (i == text.size()) return false;
  out.append(text.substr(0, i));
  for (; i < text.size(); i += len) {
    if (!maps(i)) {
      out.append(text.substr(i, len));
      continue;
    }
    if (len == 1) {
      out += char(text[i] - 'A' + 'a');
      continue;
    }
    const uint32_t* e = find_entry(kLowercase, next_cp(text, i, len));
    for (uint32_t k = 0; k < (e[1] & 31); ++k) put_cp(kNormData[(e[1] >> 5) + k], out);
  }
  return true;
}

namespace {

bool is_space_at(std::string_view t, size_t i, size_t& len) {
  const uint32_t cp = next_cp(t, i, len);
  return cp != kBad && char_class(cp) == CharClass::space;
}

// One step from `in` into `out` (cleared); false if it would not change `in`.
bool apply_step(const NormalizerStep& s, std::string_view in, bool first, std::string& out) {
  out.clear();
  switch (s.kind) {
    case NormalizerStep::Kind::form:
      return unicode_normalize(s.form, in, out);
    case NormalizerStep::Kind::lowercase:
      return unicode_lowercase(in, out);
    case NormalizerStep::Kind::prepend:
      if (in.empty()) return false;
      out.append(s.to).append(in);
      return true;
    case NormalizerStep::Kind::strip: {
      size_t b = 0, e = in.size(), len = 0;
      while (s.left && b < e && is_space_at(in, b, len)) b += len;
      // Trailing: walk forward over the tail, remembering where the last non-space ended.
      if (s.right) {
        size_t end = b;
        for (size_t i = b; i < e; i += len)
          if (!is_space_at(in, i, len)) end = i + len;
        e = end;
      }
      if (b == 0 && e == in.size()) return false;
      out.append(in.substr(b, e - b));
      return true;
    }
    case NormalizerStep::Kind::replace:
      if (s.regex) {  // the regex's matches (its split with invert + removed), each replaced
        thread_local std::vector<std::string_view> matches;
        matches.clear();
        s.regex->split(in, matches);
        if (matches.empty()) return false;
        size_t pos = 0;
        for (std::string_view m : matches) {
          const size_t at = size_t(m.data() - in.data());
          out.append(in.substr(pos, at - pos)).append(s.to);
          pos = at + m.size();
        }
        out.append(in.substr(pos));
        return true;
      }
      [[fallthrough]];
    case NormalizerStep::Kind::metaspace: {
      const bool meta = s.kind == NormalizerStep::Kind::metaspace;
      const std::string_view from = meta ? std::string_view(" ") : std::string_view(s.from);
      const std::string_view to = meta ? std::string_view("\xE2\x96\x81") : std::string_view(s.to);
      size_t hit = from.empty() ? std::string_view::npos : in.find(from);
      bool prefix = meta && !s.to.empty() && (first || !s.first_only) && !in.empty() &&
                    !(hit == 0 || in.starts_with(to));
      if (hit == std::string_view::npos && !prefix) return false;
      if (prefix) out.append(to);
      for (size_t pos = 0;;) {
        hit = from.empty() ? std::string_view::npos : in.find(from, pos);
        if (hit == std::string_view::npos) {
          out.append(in.substr(pos));
          break;
        }
        out.append(in.substr(pos, hit - pos)).append(to);
        pos = hit + from.size();
      }
      return true;
    }
  }
  return false;
}

}  // namespace

std::string_view Normalizer::apply(std::string_view text, bool first, std::string& buf) const {
  thread_local std::string tmp;
  std::string_view cur = text;
  for (const NormalizerStep& s : steps_) {
    // Write into whichever buffer `cur` is not in.
    std::string& dst = cur.data() == buf.data() ? tmp : buf;
    if (apply_step(s, cur, first, dst)) cur = dst;
  }
  if (cur.data() == tmp.data() && !tmp.empty()) {
    buf.swap(tmp);
    cur = buf;
  }
  return cur;
}

}  // namespace kiln::tok

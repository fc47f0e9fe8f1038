#include "kiln/data/curate_text.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>

#include "kiln/core/error.h"

namespace kiln::curate {
namespace {

inline uint64_t mix(uint64_t a, uint64_t b) {
  __uint128_t m = __uint128_t(a) * b;
  return uint64_t(m) ^ uint64_t(m >> 64);
}
inline uint64_t load8(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint64_t load4(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Decodes the code point at s[i] (valid UTF-8) and its length in bytes.
inline uint32_t decode(std::string_view s, size_t i, int& len) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return len = 1, c;
  auto b = [&](size_t k) { return uint32_t(static_cast<unsigned char>(s[i + k]) & 0x3F); };
  if ((c & 0xE0) == 0xC0) return len = 2, ((c & 0x1Fu) << 6) | b(1);
  if ((c & 0xF0) == 0xE0) return len = 3, ((c & 0x0Fu) << 12) | (b(1) << 6) | b(2);
  return len = 4, ((c & 0x07u) << 18) | (b(1) << 12) | (b(2) << 6) | b(3);
}

inline bool is_zs(uint32_t cp) {
  return cp == 0x20 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}
inline bool is_cc(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

}  // namespace

uint64_t hash64(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  constexpr uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull,
                     k2 = 0x8ebc6af09c88c6e3ull;
  uint64_t h = seed ^ mix(seed ^ k0, k1) ^ n;
  size_t len = n;
  while (n > 16) {
    h = mix(load8(p) ^ k1, load8(p + 8) ^ h);
    p += 16;
    n -= 16;
  }
  uint64_t a = 0, b = 0;
  if (n >= 8) {
    a = load8(p), b = load8(p + n - 8);
  } else if (n >= 4) {
    a = load4(p), b = load4(p + n - 4);
  } else if (n > 0) {
    a = (uint64_t(p[0]) << 16) | (uint64_t(p[n >> 1]) << 8) | p[n - 1];
  }
  return mix(mix(a ^ k1, b ^ h), len ^ k2);
}

namespace {

// The word tokenizer itself: emit(word) for every token, in order (see split_words).
template <class Emit>
void for_each_word(std::string_view text, Emit&& emit) {
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    while (i < n && is_space(static_cast<unsigned char>(text[i]))) ++i;
    size_t s = i;
    while (i < n && !is_space(static_cast<unsigned char>(text[i]))) ++i;
    size_t e = i;
    if (s == e) break;
    // Most words carry no punctuation at either end: one test each, then one token.
    if (!is_ascii_punct(static_cast<unsigned char>(text[s])) &&
        !is_ascii_punct(static_cast<unsigned char>(text[e - 1]))) {
      emit(text.substr(s, e - s));
      continue;
    }
    while (s < e && is_ascii_punct(static_cast<unsigned char>(text[s]))) emit(text.substr(s++, 1));
    size_t core_end = e;
    while (core_end > s && is_ascii_punct(static_cast<unsigned char>(text[core_end - 1])))
      --core_end;
    if (core_end > s) emit(text.substr(s, core_end - s));
    for (size_t k = core_end; k < e; ++k) emit(text.substr(k, 1));
  }
}

}  // namespace

void split_words(std::string_view text, std::vector<std::string_view>& words) {
  words.clear();
  for_each_word(text, [&](std::string_view w) { words.push_back(w); });
}

size_t count_words(std::string_view text) {
  size_t count = 0;
  for_each_word(text, [&](std::string_view) { ++count; });
  return count;
}

void split_lines(std::string_view text, std::vector<std::string_view>& lines) {
  lines.clear();
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
}

void split_on_newline(std::string_view text, std::vector<std::string_view>& lines) {
  lines.clear();
  size_t start = 0;
  while (true) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) {
      lines.push_back(text.substr(start));
      return;
    }
    lines.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
}

std::string_view lstrip(std::string_view s) {
  size_t b = 0;
  while (b < s.size() && is_space(static_cast<unsigned char>(s[b]))) ++b;
  return s.substr(b);
}
std::string_view rstrip(std::string_view s) {
  size_t e = s.size();
  while (e > 0 && is_space(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(0, e);
}
std::string_view strip(std::string_view s) {
  return rstrip(lstrip(s));
}

bool has_alpha(std::string_view w) {
  for (size_t i = 0; i < w.size();) {
    auto c = static_cast<unsigned char>(w[i]);
    if (c < 0x80) {
      if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
      ++i;
      continue;
    }
    int len;
    uint32_t cp = decode(w, i, len);
    auto cat = utf8proc_category(utf8proc_int32_t(cp));
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return true;
    i += len;
  }
  return false;
}

size_t count_substr(std::string_view s, std::string_view needle) {
  size_t n = 0, pos = 0;
  while ((pos = s.find(needle, pos)) != std::string_view::npos) ++n, pos += needle.size();
  return n;
}

std::string normalize_text(std::string_view text, const NormalizeConfig& cfg) {
  std::string nfc;
  if (cfg.nfc) {
    bool ascii = true;
    for (unsigned char c : text) ascii &= c < 0x80;
    if (!ascii) {
      utf8proc_uint8_t* out = nullptr;
      auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                            utf8proc_ssize_t(text.size()), &out,
                            utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n < 0) fail("normalize", "NFC failed: ", utf8proc_errmsg(n));
      nfc.assign(reinterpret_cast<const char*>(out), size_t(n));
      std::free(out);
      text = nfc;
    }
  }
  std::string out;
  out.reserve(text.size());
  if (!cfg.remove_control && !cfg.whitespace) return std::string(text);
  // Whitespace is held back and written only when the next visible character arrives, which is
  // what drops it at line ends and at the end of the text.
  int newlines = 0;    // pending newlines
  std::string hspace;  // pending run of spaces (collapsed) and tabs
  for (size_t i = 0; i < text.size();) {
    // Fast path: a run of visible ASCII (most of any text) is neither control nor whitespace, so
    // it flushes the pending whitespace and is copied whole.
    if (static_cast<unsigned char>(text[i] - 0x21) < 0x5E) {
      size_t j = i + 1;
      while (j < text.size() && static_cast<unsigned char>(text[j] - 0x21) < 0x5E) ++j;
      if (cfg.whitespace) {
        if (!out.empty()) {
          out.append(size_t(newlines < 2 ? newlines : 2), '\n');
          out += hspace;
        }
        newlines = 0;
        hspace.clear();
      }
      out.append(text.data() + i, j - i);
      i = j;
      // One space between two visible runs (the common case) needs no pending state.
      if (cfg.whitespace && i + 1 < text.size() && text[i] == ' ' &&
          static_cast<unsigned char>(text[i + 1] - 0x21) < 0x5E) {
        out += ' ';
        ++i;
      }
      continue;
    }
    int len;
    uint32_t cp = decode(text, i, len);
    std::string_view bytes = text.substr(i, size_t(len));
    i += size_t(len);
    if (cfg.remove_control) {
      if (cp == '\r') {
        if (i < text.size() && text[i] == '\n') continue;
        cp = '\n', bytes = "\n";
      } else if (is_cc(cp) && cp != '\n' && cp != '\t') {
        continue;
      }
    }
    if (cfg.whitespace) {
      if (cp == '\n' || cp == 0x2028 || cp == 0x2029) {
        ++newlines;
        hspace.clear();
        continue;
      }
      if (is_zs(cp)) {
        if (hspace.empty() || hspace.back() != ' ') hspace += ' ';
        continue;
      }
      if (cp == '\t') {
        hspace += '\t';
        continue;
      }
      if (!out.empty()) {
        out.append(size_t(newlines < 2 ? newlines : 2), '\n');
        out += hspace;
      }
      newlines = 0;
      hspace.clear();
    }
    out += bytes;
  }
  return out;
}

}  // namespace kiln::curate

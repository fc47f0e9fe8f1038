#include "kiln/tokenizer/byte_unicode.h"

#include <array>

namespace kiln::tok {

namespace {

struct Table {
  std::array<std::string, 256> spell;  // byte -> UTF-8 spelling
  std::array<int16_t, 324> byte_of;    // code point (< 324) -> byte, or -1
  Table() {
    byte_of.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      int cp = printable ? b : next++;
      byte_of[cp] = int16_t(b);
      // All code points here are < 0x800: one or two UTF-8 bytes.
      if (cp < 0x80) {
        spell[b] = std::string(1, char(cp));
      } else {
        spell[b] = {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
      }
    }
  }
};

const Table& table() {
  static const Table t;
  return t;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t b) {
  return table().spell[b];
}

std::string bytes_to_unicode(std::string_view bytes) {
  const Table& t = table();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += t.spell[c];
  return out;
}

bool unicode_to_bytes(std::string_view s, std::string& out) {
  const Table& t = table();
  out.clear();
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    int cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F);
      i += 2;
    } else {
      return false;
    }
    if (cp >= int(t.byte_of.size()) || t.byte_of[cp] < 0) return false;
    out += char(t.byte_of[cp]);
  }
  return true;
}

}  // namespace kiln::tok

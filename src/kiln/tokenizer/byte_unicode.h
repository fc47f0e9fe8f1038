// GPT-2's reversible byte <-> unicode spelling (bytes_to_unicode in openai/gpt-2 encoder.py):
// printable Latin-1 bytes spell themselves, the other 68 bytes map to U+0100.. in order, so
// every token of a byte-level vocabulary is printable text in tokenizer.json ("Ġ" = ' ').
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::tok {

// UTF-8 spelling of one byte ("Ġ" for 0x20, "!" for 0x21).
const std::string& byte_to_unicode(uint8_t b);
// Spells raw bytes with the table.
std::string bytes_to_unicode(std::string_view bytes);
// Inverse of bytes_to_unicode; false if `spelled` has a character outside the table.
[[nodiscard]] bool unicode_to_bytes(std::string_view spelled, std::string& out);

}  // namespace kiln::tok

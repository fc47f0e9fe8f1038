// Hand-written splitters for the standard patterns (gpt2, cl100k = llama3, o200k): the same
// pieces as their regexes (checked against PCRE2 and the JavaScript oracles in the tests), about
// 3x faster. Character classes come from unicode_table.inc, generated from Node's regex engine.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/pattern.h"

namespace kiln::tok {

enum class CharClass : uint8_t { other, space, lu, ll, lt, lm, lo, mark, number, invalid };

// Class of a code point (\s = ECMAScript whitespace; letters by general category).
CharClass char_class(uint32_t cp);

// True for the patterns split_standard handles.
bool has_standard_split(Pattern p);
// Appends the pieces of `text` under pattern `p`; runs of invalid UTF-8 bytes are pieces of
// their own.
void split_standard(Pattern p, std::string_view text, std::vector<std::string_view>& pieces);

}  // namespace kiln::tok

// The split patterns (pre-tokenizers) of the standard encodings, by name.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace kiln {

enum class Pattern {
  none,    // the whole text is one piece
  gpt2,    // GPT-2, r50k_base, p50k_base
  cl100k,  // cl100k_base (GPT-3.5/4)
  o200k,   // o200k_base (GPT-4o)
  llama3,  // Llama 3 (cl100k's pattern in its original, Hugging Face spelling)
  custom,  // a regex from a tokenizer.json
};

// "gpt2" (also "r50k", "p50k"), "cl100k", "o200k", "llama3", "none"; nullopt otherwise.
std::optional<Pattern> pattern_from_name(std::string_view name);
const char* pattern_name(Pattern p);
// The pattern as Hugging Face's tokenizers writes it in a Split pre-tokenizer (Oniguruma syntax).
std::string pattern_regex(Pattern p);

}  // namespace kiln

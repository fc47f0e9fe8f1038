// Hugging Face normalizers (tokenizer.json "normalizer"): NFC, NFD, NFKC, NFKD, Lowercase,
// Replace (String or Regex pattern), Prepend, Strip and Sequence of them, plus Metaspace's
// replacement
// (' ' -> "▁" and its prefix), which kiln runs here too. Unicode data comes from
// normalization_table.inc, generated from Node (tests/tokenizer/gen_normalization_table.mjs), so
// the forms match String.prototype.normalize, Transformers.js's. Cost: text with nothing to change
// (ASCII under NFC, say) is scanned once and never copied.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/pre_tokenizer.h"

namespace kiln::tok {

// The code point at text[i] and, in `len`, its length in bytes; 0xFFFFFFFF (length 1) for a byte
// that does not start a valid UTF-8 character.
uint32_t utf8_decode(std::string_view text, size_t i, size_t& len);

enum class UnicodeForm { nfd, nfkd, nfc, nfkc };

// Appends `text` in form `f` to `out`; returns false (and appends nothing) where a scan shows
// `text` is already in that form (true may still give the same text). Invalid UTF-8 bytes pass
// through unchanged.
bool unicode_normalize(UnicodeForm f, std::string_view text, std::string& out);
// Full lowercase mapping, per code point (as String.prototype.toLowerCase, except the final-sigma
// rule: "Σ" always becomes "σ"). Same contract as unicode_normalize.
bool unicode_lowercase(std::string_view text, std::string& out);

struct NormalizerStep {
  enum class Kind { form, lowercase, replace, prepend, strip, metaspace };
  Kind kind = Kind::form;
  UnicodeForm form = UnicodeForm::nfc;
  std::string from, to;  // replace: every `from` becomes `to`; prepend/metaspace: `to` is prefixed
  std::shared_ptr<const PreTokenizer> regex;  // replace: every match of it becomes `to` instead
  bool left = false, right = false;           // strip: whitespace at the start / end
  bool first_only = false;  // metaspace: prefix only the text that starts the input
};

class Normalizer {
 public:
  void add(NormalizerStep s) { steps_.push_back(std::move(s)); }
  bool empty() const { return steps_.empty(); }
  const std::vector<NormalizerStep>& steps() const { return steps_; }

  // The normalized text: a view of `text` itself when no step changed it, else of `buf`.
  // `first`: the text starts the input (not after an added token).
  std::string_view apply(std::string_view text, bool first, std::string& buf) const;

 private:
  std::vector<NormalizerStep> steps_;
};

}  // namespace kiln::tok

#include "kiln/tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "kiln/core/error.h"
#include "kiln/tokenizer/standard_split.h"

namespace kiln {

std::optional<Pattern> pattern_from_name(std::string_view name) {
  if (name == "gpt2" || name == "r50k" || name == "p50k" || name == "r50k_base" ||
      name == "p50k_base")
    return Pattern::gpt2;
  if (name == "cl100k" || name == "cl100k_base") return Pattern::cl100k;
  if (name == "o200k" || name == "o200k_base") return Pattern::o200k;
  if (name == "llama3") return Pattern::llama3;
  if (name == "none") return Pattern::none;
  return std::nullopt;
}

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::none:
      return "none";
    case Pattern::gpt2:
      return "gpt2";
    case Pattern::cl100k:
      return "cl100k";
    case Pattern::o200k:
      return "o200k";
    case Pattern::llama3:
      return "llama3";
    case Pattern::custom:
      return "custom";
  }
  return "?";
}

std::string pattern_regex(Pattern p) {
  switch (p) {
    case Pattern::gpt2:
      return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    case Pattern::cl100k:  // tiktoken's current spelling: keeps whitespace that ends the text
      return R"('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
    case Pattern::llama3:
      return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    case Pattern::o200k:
      return R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    default:
      return "";
  }
}

}  // namespace kiln

namespace kiln::tok {

namespace {

// The case-insensitive contractions spelled as JavaScript's ports do ([sS] rather than (?i:s),
// which would also match U+017F under Unicode case folding).
constexpr const char* kContractions = "'(?:[sS]|[dD]|[mM]|[tT]|[lL][lL]|[vV][eE]|[rR][eE])";

// tiktoken's patterns (openai_public.py); cl100k in its current, possessive form.
std::string js_pattern(Pattern p) {
  std::string c = kContractions;
  switch (p) {
    case Pattern::gpt2:
      return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    case Pattern::cl100k:
      return c +
             R"(|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s)";
    case Pattern::o200k: {
      std::string upper = R"([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])",
                  lower = R"([\p{Ll}\p{Lm}\p{Lo}\p{M}])";
      std::string suffix = "(?:" + c + ")?";
      return R"([^\r\n\p{L}\p{N}]?)" + upper + "*" + lower + "+" + suffix +
             R"(|[^\r\n\p{L}\p{N}]?)" + upper + "+" + lower + "*" + suffix +
             R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
    }
    case Pattern::llama3:
      return pattern_regex(Pattern::llama3);
    default:
      return "";
  }
}

// ECMAScript's WhiteSpace + LineTerminator, as the body of a character class.
constexpr const char* kSpaceClass =
    R"(\t\n\x{0B}\f\r\x{20}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}\x{FEFF})";

// Rewrites \s and \S to kSpaceClass, inside and outside character classes.
std::string with_js_spaces(std::string_view re) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    char ch = re[i];
    if (ch == '\\' && i + 1 < re.size()) {
      char n = re[i + 1];
      ++i;
      if (n == 's') {
        out += in_class ? std::string(kSpaceClass) : str("[", kSpaceClass, "]");
      } else if (n == 'S' && !in_class) {
        out += str("[^", kSpaceClass, "]");
      } else {
        out += ch;
        out += n;
      }
      continue;
    }
    if (ch == '[' && !in_class) {
      in_class = true;
      out += ch;
      if (i + 1 < re.size() && re[i + 1] == '^') out += re[++i];
      if (i + 1 < re.size() && re[i + 1] == ']') out += re[++i];  // literal ] first in class
      continue;
    }
    if (ch == ']' && in_class) in_class = false;
    out += ch;
  }
  return out;
}

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

PreTokenizer::PreTokenizer(Pattern p, const std::string& regex, bool force_regex) : pattern_(p) {
  if (p == Pattern::none) return;
  regex_ = p == Pattern::custom ? regex : pattern_regex(p);
  // A custom regex that spells a standard pattern runs as that pattern.
  if (p == Pattern::custom)
    for (Pattern q : {Pattern::llama3, Pattern::cl100k, Pattern::o200k, Pattern::gpt2})
      if (regex == pattern_regex(q)) pattern_ = q;
  fast_ = has_standard_split(pattern_) && !force_regex;
  std::string source = with_js_spaces(pattern_ == Pattern::custom ? regex_ : js_pattern(pattern_));
  int err = 0;
  PCRE2_SIZE offset = 0;
  auto re = std::make_shared<Regex>();
  re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(),
                           PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY,
                           &err, &offset, nullptr);
  if (!re->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    fail("pre_tokenizer", "cannot compile the split regex '", regex_, "' at offset ", offset, ": ",
         reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if no JIT
  re_ = std::move(re);
}

namespace {
// Per-thread match state: match data cannot be shared between threads.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* ctx = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
  MatchState() { pcre2_jit_stack_assign(ctx, nullptr, stack); }
  ~MatchState() {
    pcre2_match_data_free(data);
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
  }
};
}  // namespace

void PreTokenizer::set_behavior(SplitBehavior b, bool invert) {
  behavior_ = b;
  invert_ = invert;
}

void PreTokenizer::spans(std::string_view text,
                         std::vector<std::pair<std::string_view, bool>>& out) const {
  thread_local MatchState st;
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0, covered = 0;
  while (pos < text.size()) {
    int rc = pcre2_match(re_->code, subject, text.size(), pos, 0, st.data, st.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      fail("pre_tokenizer", "matching failed at byte ", pos, ": ",
           reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    size_t b = ov[0], e = ov[1];
    if (b > covered) out.emplace_back(text.substr(covered, b - covered), false);
    if (e > b) {
      out.emplace_back(text.substr(b, e - b), true);
      covered = pos = e;
    } else {
      covered = b;
      pos = b + 1;  // empty match: step over one byte (a custom regex could match "")
      while (pos < text.size() && (uint8_t(text[pos]) & 0xC0) == 0x80) ++pos;
    }
  }
  if (covered < text.size()) out.emplace_back(text.substr(covered), false);
}

void PreTokenizer::split(std::string_view text, std::vector<std::string_view>& pieces) const {
  const bool plain = behavior_ == SplitBehavior::isolated && !invert_;
  if (fast_ && plain) {
    split_standard(pattern_, text, pieces);
    return;
  }
  if (!re_) {
    if (!text.empty()) pieces.push_back(text);
    return;
  }
  thread_local std::vector<std::pair<std::string_view, bool>> sp;
  sp.clear();
  spans(text, sp);
  if (invert_)
    for (auto& s : sp) s.second = !s.second;
  // Hugging Face's SplitDelimiterBehavior (tokenizers/src/tokenizer/normalizer.rs, split()):
  // a match merges into its neighbour only if the span before (after) it was not a match.
  auto join = [](std::string_view a, std::string_view b) {
    return std::string_view(a.data(), size_t(b.data() + b.size() - a.data()));
  };
  const size_t first = pieces.size();
  bool prev_match = false;
  switch (behavior_) {
    case SplitBehavior::isolated:
      for (const auto& s : sp) pieces.push_back(s.first);
      break;
    case SplitBehavior::removed:
      for (const auto& s : sp)
        if (!s.second) pieces.push_back(s.first);
      break;
    case SplitBehavior::merged_with_previous:
      for (const auto& [v, m] : sp) {
        if (m && !prev_match && pieces.size() > first)
          pieces.back() = join(pieces.back(), v);
        else
          pieces.push_back(v);
        prev_match = m;
      }
      break;
    case SplitBehavior::contiguous:
      for (const auto& [v, m] : sp) {
        if (m == prev_match && pieces.size() > first)
          pieces.back() = join(pieces.back(), v);
        else
          pieces.push_back(v);
        prev_match = m;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (size_t k = sp.size(); k-- > 0;) {
        const auto& [v, m] = sp[k];
        if (m && !prev_match && pieces.size() > first)
          pieces.back() = join(v, pieces.back());
        else
          pieces.push_back(v);
        prev_match = m;
      }
      std::reverse(pieces.begin() + std::ptrdiff_t(first), pieces.end());
      break;
  }
}

}  // namespace kiln::tok

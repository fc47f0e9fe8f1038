// A byte-level BPE tokenizer: the one type the rest of kiln encodes and decodes text with.
// Sources: Hugging Face tokenizer.json (BPE, byte-level or byte-fallback, with its normalizer,
// pre-tokenizer, post-processor and decoder: hf_pipeline.h), tiktoken rank files, SentencePiece
// BPE .model;
// trained ones come from trainer.h. A "byte-level" vocabulary with no merges (256 byte symbols,
// GPT-2's byte-to-unicode spelling) is the simplest member of the family and what a fresh kiln
// model starts with. Ids match tiktoken / Hugging Face / SentencePiece / Transformers.js
// (tests/tokenizer/test_oracle*.cpp, test_hf_pipeline.cpp); encode costs about 15-20 ns per byte of
// English per thread, linear-ish (n log n) on pathological input. All const methods are
// thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/tokenizer/pattern.h"

namespace kiln {

// What a file cannot say itself (a .tiktoken rank file has no pattern or special tokens).
struct LoadOptions {
  std::optional<Pattern> pattern;                         // overrides the file's own
  std::vector<std::pair<std::string, int32_t>> specials;  // replaces the standard ones
};

// What a tokenizer is, for `kiln tokenizer info` and logs.
struct TokenizerInfo {
  std::string kind;     // "bpe" (byte-level) or "sentencepiece"
  std::string pattern;  // pre-tokenizer name ("cl100k", "custom", "none", ...)
  int32_t vocab_size = 0;
  int64_t merges = 0;
  std::vector<std::pair<std::string, int32_t>> specials;  // added tokens
  std::optional<int32_t> eos;
  // normalizer → pre-tokenizer → model → post-processor → decoder, one line.
  std::string pipeline;
};

class Tokenizer {
 public:
  // Loads tokenizer.json, a .tiktoken rank file or a SentencePiece .model, chosen by content.
  // Throws Error naming the file, the key or line, and what is wrong.
  static Tokenizer load(const std::string& path, const LoadOptions& opts = {});
  // 256 byte tokens (ids 0..255 = bytes 0..255) followed by the given special tokens.
  static Tokenizer byte_level(const std::vector<std::string>& specials);

  // Writes a Hugging Face tokenizer.json (atomically: temporary file, fsync, rename). Byte-level
  // BPE only: a SentencePiece model throws (keep its .model).
  void save(const std::string& path) const;

  // Encodes UTF-8 (or any bytes: invalid UTF-8 round-trips through byte tokens). With
  // allow_special, special-token strings in the text become their ids; otherwise plain text.
  std::vector<int32_t> encode(std::string_view text, bool allow_special = false) const;
  // encode(), but it stops once the ids number more than max_tokens: a text far over a context
  // is known to be after about max_tokens tokens of BPE (the pre-tokenizer and the scan for
  // added tokens still read all of it, in linear time). `ids` then is a prefix of encode()'s.
  struct Encoded {
    std::vector<int32_t> ids;
    size_t bytes = 0;  // of the text encoded into ids (all of it unless stopped early)
  };
  Encoded encode_at_most(std::string_view text, size_t max_tokens,
                         bool allow_special = false) const;
  // `ids` as the model sees a whole sequence: the post-processor's special tokens around them
  // (TemplateProcessing's "single", e.g. BOS first; nothing for most byte-level BPEs). What
  // Hugging Face's encode(text, add_special_tokens=True) gives.
  std::vector<int32_t> with_special_tokens(std::vector<int32_t> ids) const;
  // encode() of every document, across kiln's thread pool (documents are independent).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string_view>& docs,
                                                 bool allow_special = false) const;
  // Concatenated bytes of the tokens (may be invalid UTF-8 mid-character).
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const;
  TokenizerInfo info() const;
  // Id of a special (added) token such as "<|endoftext|>", if the vocabulary has it.
  std::optional<int32_t> special_id(std::string_view token) const;
  // Id that ends a document / generation (eos), if any.
  std::optional<int32_t> eos_id() const;

  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  struct Impl;                                     // tokenizer_impl.h
  explicit Tokenizer(std::unique_ptr<Impl> impl);  // for the loaders and the trainer
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Cuts text into documents of about `bytes` bytes, each ending at a line end (for encode_batch
// and training on large files: pieces rarely cross a line end, so ids barely change).
std::vector<std::string_view> split_at_lines(std::string_view text, size_t bytes);

// Streaming decode for generation: feed ids one at a time, get back only complete UTF-8
// (bytes of a character split across tokens are held until the character is whole).
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is left, even if incomplete

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace kiln

// Tokenizer::Impl, shared by the files that build one (hf_json.cpp, tiktoken_file.cpp,
// sentencepiece_model.cpp, trainer.cpp) and the one that runs it (tokenizer.cpp). Internal.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/tokenizer/bpe.h"
#include "kiln/tokenizer/normalizer.h"
#include "kiln/tokenizer/pre_tokenizer.h"
#include "kiln/tokenizer/sentencepiece.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct Tokenizer::Impl {
  // An added token: matched in the text before pre-tokenization and never split. `special`
  // ones are matched only when encode() is asked to (allow_special); the others always.
  struct Added {
    std::string text;
    int32_t id;
    bool special;
    bool lstrip = false, rstrip = false;  // whitespace before / after the match goes with it
    bool single_word = false;             // matched only between non-word characters
    bool normalized = false;  // kept for save(); matched in the raw text all the same, as
                              // Transformers.js does (Hugging Face: in the normalized text)
  };

  tok::Bpe bpe;                // byte-level BPE vocabulary: tokens()[id] = bytes ("" for holes)
  tok::Normalizer normalizer;  // runs on each stretch between added tokens, before `pre`
  tok::PreTokenizer pre;       // cuts text into pieces before BPE
  std::vector<tok::PreTokenizer> pre_rest;  // a Sequence's later splits, each over every piece
  bool add_prefix_space = false;            // Hugging Face ByteLevel: prepend ' ' to the text
  std::optional<tok::SentencePiece> sp;     // set for SentencePiece models (replaces bpe/pre)
  std::vector<Added> added;                 // in id order
  std::vector<std::string> id_bytes;        // decode table, every id (holes: "")
  std::vector<uint8_t> is_hole;             // 1 for ids with no token
  std::optional<int32_t> eos;

  // Post-processor (TemplateProcessing "single"): ids around a sequence with special tokens.
  std::vector<int32_t> post_prefix, post_suffix;
  // Decoder: per-id text where it is not the model's own bytes (Hugging Face char-level BPE:
  // Replace/ByteFallback/Metaspace applied per token), and leading spaces to strip (Strip,
  // Metaspace) from the decoded text.
  std::vector<std::string> decoded;
  size_t decode_strip = 0;
  // A tokenizer.json's pipeline as read, for save() to write back and info() to describe:
  // normalizer, pre_tokenizer, post_processor, decoder and the model's options (JSON text; "" =
  // kiln's defaults for a byte-level BPE).
  struct Pipeline {
    std::string normalizer, pre_tokenizer, post_processor, decoder, model_options;
  } pipeline;

  // Matching of added tokens: for each first byte, the candidates longest first.
  std::array<std::vector<int32_t>, 256> added_by_first;  // indices into `added`

  // Fills id_bytes, is_hole, added_by_first and eos (unless set) from bpe/sp and `added`.
  void finalize();
  // Cuts (normalized) text into pieces: `pre`, then each of `pre_rest` over every piece.
  void split(std::string_view text, std::vector<std::string_view>& pieces) const;
  // Encodes text with no added tokens in it; `first`: it starts the input. Stops early once
  // `out` holds more than max_tokens ids; returns the bytes of `text` encoded.
  size_t encode_ordinary(std::string_view text, std::vector<int32_t>& out, bool first = true,
                         size_t max_tokens = SIZE_MAX) const;
};

// Builders, one per file format; `path` is only for messages.
Tokenizer::Impl load_hf_json(const std::string& path, const std::string& content);
std::string to_hf_json(const Tokenizer::Impl& impl);
Tokenizer::Impl load_tiktoken(const std::string& path, const std::string& content,
                              const LoadOptions& opts);
Tokenizer::Impl load_sentencepiece(const std::string& path, const std::string& content);

// "normalizer → pre-tokenizer → model → post-processor → decoder", for info().
std::string describe_pipeline(const Tokenizer::Impl& impl);

// Wraps a Tokenizer around a built Impl.
Tokenizer make_tokenizer(Tokenizer::Impl impl);

}  // namespace kiln

// SentencePiece BPE (Llama 2): spaces become "▁" (U+2581), a "▁" is prepended (the dummy prefix),
// then characters merge pairwise, highest-scoring piece first, leftmost on ties; characters
// outside the vocabulary become their UTF-8 bytes as <0xNN> tokens (byte fallback).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/tokenizer/bpe.h"

namespace kiln::tok {

class SentencePiece {
 public:
  enum class Type : int32_t {
    normal = 1,
    unknown = 2,
    control = 3,
    user_defined = 4,
    unused = 5,
    byte = 6
  };
  struct Piece {
    std::string text;  // UTF-8, with "▁" for spaces
    float score = 0;
    Type type = Type::normal;
  };

  SentencePiece() = default;
  SentencePiece(std::vector<Piece> pieces, bool add_dummy_prefix, bool remove_extra_whitespaces,
                bool byte_fallback);

  // `first`: the text starts the input (not after an added token); with a "first only" prefix
  // scheme (Hugging Face Metaspace prepend_scheme "first") only such text gets the dummy prefix.
  // Stops after the word that takes `out` past max_tokens ids; returns the bytes of the
  // normalized text encoded (at least those of `text` they came from).
  size_t encode(std::string_view text, std::vector<int32_t>& out, bool first = true,
                size_t max_tokens = SIZE_MAX) const;
  void set_prefix_first_only(bool on) { prefix_first_only_ = on; }
  // Hugging Face tokenizer.json: the text comes normalized by the pipeline (no dummy prefix,
  // spaces stay as they are), and runs of unknown pieces become one <unk> when `fuse_unk`.
  void set_raw_input(bool fuse_unk) {
    raw_ = true;
    add_dummy_prefix_ = false;
    fuse_unk_ = fuse_unk;
  }
  bool raw_input() const { return raw_; }
  // Hugging Face byte-fallback BPE (tokenizer.json): only these pairs (left id, right id) merge,
  // lowest rank first, instead of any pair whose concatenation is a piece.
  void set_merges(const std::unordered_map<uint64_t, int32_t>& pair_rank);
  // The bytes a piece stands for: "▁" -> ' ', <0xNN> -> the byte, control pieces -> "".
  std::string piece_bytes(int32_t id) const;

  const std::vector<Piece>& pieces() const { return pieces_; }
  // {left << 32 | right, rank} of every merge set_merges() was given, in no particular order.
  std::vector<std::pair<uint64_t, int32_t>> merges() const;
  size_t num_merges() const { return pair_merges_.size(); }
  bool add_dummy_prefix() const { return add_dummy_prefix_; }
  bool byte_fallback() const { return byte_fallback_; }
  bool remove_extra_whitespaces() const { return remove_extra_whitespaces_; }
  int32_t unk_id() const { return unk_id_; }

 private:
  void encode_word(std::string_view norm, std::vector<int32_t>& out) const;
  // encode() after normalization: word by word where no piece spans words.
  size_t encode_normalized(std::string_view all, std::vector<int32_t>& out,
                           size_t max_tokens) const;

  std::vector<Piece> pieces_;
  std::vector<std::string> mergeable_;  // text of normal/user-defined pieces, "" for the others
  BytesMap index_;                      // over mergeable_
  int32_t byte_ids_[256];
  int32_t unk_id_ = -1;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = false;
  bool byte_fallback_ = false;
  bool split_words_ = false;  // see encode()
  // Characters some piece has right before a "▁" that follows other characters (Gemma's ">▁</"):
  // a word ending in one is not cut from the next.
  std::vector<std::string> glue_;
  bool raw_ = false, fuse_unk_ = false;
  bool prefix_first_only_ = false;
  struct Merge {
    int32_t rank, merged;  // merged: the id of the piece the pair makes
  };
  std::unordered_map<uint64_t, Merge> pair_merges_;  // left << 32 | right -> merge
  uint64_t owner_ = 0;  // tags this model's entries in the per-thread word cache
};

}  // namespace kiln::tok

// Megatron-LM's indexed dataset (megatron/core/datasets/indexed_dataset.py): token ids in
// PREFIX.bin, an index in PREFIX.idx. Files written here are read by Megatron's own reader and
// vice versa. Layout of the .idx (little endian, no padding, so arrays are unaligned):
//   "MMIDIDX\0\0" (9 bytes) | version u64 = 1 | dtype code u8 | S = sequence count u64 |
//   D = document-index count u64 (documents + 1) | lengths int32[S] | byte pointers int64[S] |
//   document indices int64[D] (0, then the sequence index that ends each document)
//   [| modes int8[S], multimodal datasets only].
// kiln writes one sequence per document (like Megatron's preprocess_data.py without sentence
// splitting), each ending with the end-of-document token.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kiln/io/file.h"

namespace kiln {

// Megatron's DType codes.
enum class TokenDtype : uint8_t {
  uint8 = 1,
  int8 = 2,
  int16 = 3,
  int32 = 4,
  int64 = 5,
  float64 = 6,
  float32 = 7,
  uint16 = 8
};
int token_dtype_size(TokenDtype t);
const char* token_dtype_name(TokenDtype t);
// Megatron's DType.optimal_dtype: uint16 when the vocabulary has fewer than 65500 ids, else int32.
TokenDtype token_dtype_for_vocab(int64_t vocab_size);

// Streams documents into PREFIX.bin and writes PREFIX.idx at finalize(). Both go through
// AtomicFile: nothing appears at PREFIX.* until finalize(), and a writer dropped without it
// leaves the old files untouched. Memory: 12 bytes per document for the index.
class IndexedDatasetWriter {
 public:
  // dtype: uint16 or int32 (what `kiln data tokenize` writes), or any other integer code.
  IndexedDatasetWriter(std::string prefix, TokenDtype dtype);
  // One document = one sequence. Ids must fit the dtype (checked).
  void add_document(std::span<const int32_t> ids);
  // Commits PREFIX.bin, then PREFIX.idx (an existing PREFIX.idx is removed first, so a crash
  // in between never pairs an old index with new tokens).
  void finalize();

  int64_t num_documents() const { return int64_t(lengths_.size()); }
  int64_t num_tokens() const { return tokens_; }

 private:
  std::string prefix_;
  TokenDtype dtype_;
  AtomicFile bin_;
  std::vector<int32_t> lengths_;  // (S)
  std::vector<char> buf_;         // one document converted to dtype
  int64_t tokens_ = 0;
  bool finalized_ = false;
};

// Read-only view of PREFIX.bin / PREFIX.idx, both memory-mapped: opening costs one pass over
// the index to validate it (O(S)), no reads of the tokens. Thread-safe (all methods const).
class IndexedDataset {
 public:
  // Throws Error naming the file, what is wrong (magic, version, dtype, sizes, pointers beyond
  // the .bin) and what to do.
  static std::shared_ptr<const IndexedDataset> open(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  TokenDtype dtype() const { return dtype_; }
  int64_t num_sequences() const { return S_; }
  int64_t num_documents() const { return D_ - 1; }
  int64_t num_tokens() const { return tokens_; }

  int32_t sequence_length(int64_t i) const;
  int64_t sequence_pointer(int64_t i) const;  // byte offset into .bin
  // j in [0, num_documents()]: document k holds sequences [document_index(k), document_index(k+1)).
  int64_t document_index(int64_t j) const;

  // Tokens [offset, offset + n) of sequence i, converted to int32, into out (n). Bounds checked.
  void read(int64_t i, int64_t offset, int64_t n, int32_t* out) const;
  // Whole sequence i as int32. Cost: one copy.
  std::vector<int32_t> sequence(int64_t i) const;
  // Zero-copy typed view of sequence i; T must match dtype() (checked).
  template <typename T>
  std::span<const T> typed_sequence(int64_t i) const {
    check_type(sizeof(T), std::is_signed_v<T>);
    return {reinterpret_cast<const T*>(bin_->data() + sequence_pointer(i)),
            size_t(sequence_length(i))};
  }

 private:
  IndexedDataset() = default;
  void check_type(size_t bytes, bool is_signed) const;
  std::string prefix_;
  std::shared_ptr<MappedFile> idx_, bin_;
  TokenDtype dtype_ = TokenDtype::int32;
  int64_t S_ = 0, D_ = 0, tokens_ = 0;
  const uint8_t* lengths_ = nullptr;   // int32[S], unaligned
  const uint8_t* pointers_ = nullptr;  // int64[S], unaligned
  const uint8_t* doc_idx_ = nullptr;   // int64[D], unaligned
};

}  // namespace kiln

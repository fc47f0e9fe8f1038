#include "kiln/data/indexed_dataset.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>

#include "kiln/core/checked_math.h"
#include "kiln/core/error.h"
#include "kiln/core/limits.h"

namespace kiln {
namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;  // magic, version, dtype, S, D

template <typename T>
T load(const uint8_t* p) {  // unaligned little-endian read (x86 and ARM are little endian)
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool valid_code(uint8_t c) {
  return c >= 1 && c <= 8;
}
bool is_float(TokenDtype t) {
  return t == TokenDtype::float32 || t == TokenDtype::float64;
}

template <typename T>
void convert_from(const uint8_t* src, int64_t n, int32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = int32_t(load<T>(src + i * sizeof(T)));
}

}  // namespace

int token_dtype_size(TokenDtype t) {
  switch (t) {
    case TokenDtype::uint8:
    case TokenDtype::int8:
      return 1;
    case TokenDtype::int16:
    case TokenDtype::uint16:
      return 2;
    case TokenDtype::int32:
    case TokenDtype::float32:
      return 4;
    case TokenDtype::int64:
    case TokenDtype::float64:
      return 8;
  }
  return 0;
}

const char* token_dtype_name(TokenDtype t) {
  static const char* names[] = {"?",     "uint8",   "int8",    "int16", "int32",
                                "int64", "float64", "float32", "uint16"};
  uint8_t c = uint8_t(t);
  return valid_code(c) ? names[c] : "?";
}

TokenDtype token_dtype_for_vocab(int64_t vocab_size) {
  return vocab_size < 65500 ? TokenDtype::uint16 : TokenDtype::int32;
}

// ---- writer ----

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, TokenDtype dtype)
    : prefix_(std::move(prefix)), dtype_(dtype), bin_(prefix_ + ".bin") {
  KILN_CHECK(valid_code(uint8_t(dtype)) && !is_float(dtype), "indexed_dataset", "token dtype code ",
             int(dtype), " is not an integer type: use uint16 or int32");
}

void IndexedDatasetWriter::add_document(std::span<const int32_t> ids) {
  KILN_CHECK(!finalized_, "indexed_dataset", "add_document after finalize on ", prefix_);
  KILN_CHECK(ids.size() <= size_t(std::numeric_limits<int32_t>::max()), "indexed_dataset",
             "document of ", ids.size(), " tokens exceeds the format's int32 length");
  const int w = token_dtype_size(dtype_);
  buf_.resize(ids.size() * w);
  int64_t lo = 0, hi = 0;
  switch (dtype_) {
    case TokenDtype::uint8:
      lo = 0, hi = 255;
      break;
    case TokenDtype::int8:
      lo = -128, hi = 127;
      break;
    case TokenDtype::int16:
      lo = -32768, hi = 32767;
      break;
    case TokenDtype::uint16:
      lo = 0, hi = 65535;
      break;
    default:
      lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max();
  }
  char* dst = buf_.data();
  for (size_t i = 0; i < ids.size(); ++i) {
    int64_t v = ids[i];
    KILN_CHECK(v >= lo && v <= hi, "indexed_dataset", "token id ", v, " does not fit ",
               token_dtype_name(dtype_), " in ", prefix_,
               ".bin: the vocabulary is larger than the dtype allows; write int32");
    switch (w) {
      case 1:
        dst[i] = char(int8_t(v));
        break;
      case 2: {
        uint16_t u = uint16_t(v);
        std::memcpy(dst + 2 * i, &u, 2);
        break;
      }
      case 4: {
        int32_t u = int32_t(v);
        std::memcpy(dst + 4 * i, &u, 4);
        break;
      }
      default:
        std::memcpy(dst + 8 * i, &v, 8);
    }
  }
  bin_.write(buf_.data(), buf_.size());
  lengths_.push_back(int32_t(ids.size()));
  tokens_ += int64_t(ids.size());
}

void IndexedDatasetWriter::finalize() {
  KILN_CHECK(!finalized_, "indexed_dataset", "finalize called twice on ", prefix_);
  finalized_ = true;
  const uint64_t S = lengths_.size(), D = S + 1;
  std::string idx;
  idx.reserve(kHeaderBytes + S * 20 + 8);
  auto put = [&](const void* p, size_t n) { idx.append(static_cast<const char*>(p), n); };
  const uint64_t version = 1;
  const uint8_t code = uint8_t(dtype_);
  put(kMagic, 9);
  put(&version, 8);
  put(&code, 1);
  put(&S, 8);
  put(&D, 8);
  put(lengths_.data(), S * 4);
  int64_t ptr = 0;
  const int64_t w = token_dtype_size(dtype_);
  for (int32_t len : lengths_) {
    put(&ptr, 8);
    ptr += int64_t(len) * w;
  }
  for (uint64_t j = 0; j < D; ++j) {
    int64_t v = int64_t(j);
    put(&v, 8);
  }
  std::error_code ec;
  std::filesystem::remove(prefix_ + ".idx", ec);  // never pair an old index with new tokens
  bin_.commit();
  write_file_atomic(prefix_ + ".idx", idx);
}

// ---- reader ----

std::shared_ptr<const IndexedDataset> IndexedDataset::open(const std::string& prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  KILN_CHECK(file_exists(idx_path) && file_exists(bin_path), "indexed_dataset", "no dataset at '",
             prefix, "': expected ", idx_path, " and ", bin_path,
             " (write them with `kiln data tokenize`)");
  std::shared_ptr<IndexedDataset> ds(new IndexedDataset());
  ds->prefix_ = prefix;
  ds->idx_ = MappedFile::open(idx_path);
  ds->bin_ = MappedFile::open(bin_path);
  const uint8_t* p = ds->idx_->data();
  const size_t n = ds->idx_->size();
  KILN_CHECK(n >= kHeaderBytes, "indexed_dataset", idx_path, " has ", n,
             " bytes, fewer than the 34-byte header: the file is truncated; re-run kiln data "
             "tokenize");
  KILN_CHECK(std::memcmp(p, kMagic, 9) == 0, "indexed_dataset", idx_path,
             " does not start with MMIDIDX\\0\\0: not a Megatron mmap indexed dataset (the legacy "
             "TNTIDX format is not supported)");
  const uint64_t version = load<uint64_t>(p + 9);
  KILN_CHECK(version == 1, "indexed_dataset", idx_path, " has version ", version,
             ", expected 1: written by an unsupported Megatron version");
  const uint8_t code = p[17];
  KILN_CHECK(valid_code(code) && !is_float(TokenDtype(code)), "indexed_dataset", idx_path,
             " has dtype code ", int(code),
             ", expected an integer type (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 8 uint16)");
  ds->dtype_ = TokenDtype(code);
  const uint64_t S = load<uint64_t>(p + 18), D = load<uint64_t>(p + 26);
  limits::check_limit("indexed_dataset", idx_path, "the sequence count S",
                      int64_t(std::min<uint64_t>(S, INT64_MAX)), limits::kMaxIndexEntries);
  limits::check_limit("indexed_dataset", idx_path, "the document-index count D",
                      int64_t(std::min<uint64_t>(D, INT64_MAX)), limits::kMaxIndexEntries);
  KILN_CHECK(D >= 1, "indexed_dataset", idx_path,
             " has D = 0 document indices: the header is corrupt (D counts documents + 1)");
  const uint64_t need = kHeaderBytes + S * 4 + S * 8 + D * 8;
  KILN_CHECK(n == need || n == need + S, "indexed_dataset", idx_path, " has ", n,
             " bytes but its header (", S, " sequences, ", D, " document indices) needs ", need,
             n < need ? ": the file is truncated; re-run kiln data tokenize"
                      : ": trailing bytes; the file is corrupt");
  ds->S_ = int64_t(S);
  ds->D_ = int64_t(D);
  ds->lengths_ = p + kHeaderBytes;
  ds->pointers_ = ds->lengths_ + S * 4;
  ds->doc_idx_ = ds->pointers_ + S * 8;

  const int64_t w = token_dtype_size(ds->dtype_), bin_size = int64_t(ds->bin_->size());
  int64_t tokens = 0;
  for (int64_t i = 0; i < ds->S_; ++i) {
    const int64_t len = ds->sequence_length(i), ptr = ds->sequence_pointer(i);
    KILN_CHECK(len >= 0, "indexed_dataset", idx_path, ": sequence ", i, " has length ", len);
    // Overflow-safe: ptr comes from the file, and ptr + len * w must not wrap past the check
    // (len * w cannot overflow: len is int32, w at most 8).
    const auto end = checked_add(ptr, len * w);
    KILN_CHECK(ptr >= 0 && ptr % w == 0 && end && *end <= bin_size, "indexed_dataset", idx_path,
               ": sequence ", i, " has pointer ", ptr, " and length ", len, " (", w,
               "-byte tokens), past the end of ", bin_path, " (", bin_size,
               " bytes): the .bin is truncated or belongs to another index; re-run kiln data "
               "tokenize");
    tokens += len;
  }
  ds->tokens_ = tokens;
  KILN_CHECK(ds->document_index(0) == 0 && ds->document_index(ds->D_ - 1) == ds->S_,
             "indexed_dataset", idx_path, ": document indices must run from 0 to ", S, ", got ",
             ds->document_index(0), " .. ", ds->document_index(ds->D_ - 1));
  for (int64_t j = 1; j < ds->D_; ++j)
    KILN_CHECK(ds->document_index(j) >= ds->document_index(j - 1), "indexed_dataset", idx_path,
               ": document index ", j, " (", ds->document_index(j), ") is below the previous (",
               ds->document_index(j - 1), ")");
  return ds;
}

int32_t IndexedDataset::sequence_length(int64_t i) const {
  KILN_DCHECK(i >= 0 && i < S_);
  return load<int32_t>(lengths_ + 4 * i);
}
int64_t IndexedDataset::sequence_pointer(int64_t i) const {
  KILN_DCHECK(i >= 0 && i < S_);
  return load<int64_t>(pointers_ + 8 * i);
}
int64_t IndexedDataset::document_index(int64_t j) const {
  KILN_DCHECK(j >= 0 && j < D_);
  return load<int64_t>(doc_idx_ + 8 * j);
}

void IndexedDataset::read(int64_t i, int64_t offset, int64_t n, int32_t* out) const {
  KILN_CHECK(i >= 0 && i < S_ && offset >= 0 && n >= 0 && offset + n <= sequence_length(i),
             "indexed_dataset", "read of tokens [", offset, ", ", offset + n, ") of sequence ", i,
             " is out of range (", S_, " sequences in ", prefix_, ")");
  const uint8_t* src = bin_->data() + sequence_pointer(i) + offset * token_dtype_size(dtype_);
  switch (dtype_) {
    case TokenDtype::uint8:
      convert_from<uint8_t>(src, n, out);
      break;
    case TokenDtype::int8:
      convert_from<int8_t>(src, n, out);
      break;
    case TokenDtype::int16:
      convert_from<int16_t>(src, n, out);
      break;
    case TokenDtype::uint16:
      convert_from<uint16_t>(src, n, out);
      break;
    case TokenDtype::int32:
      std::memcpy(out, src, size_t(n) * 4);
      break;
    case TokenDtype::int64:
      convert_from<int64_t>(src, n, out);
      break;
    default:
      fail("indexed_dataset", "float tokens are not supported");
  }
}

std::vector<int32_t> IndexedDataset::sequence(int64_t i) const {
  KILN_CHECK(i >= 0 && i < S_, "indexed_dataset", "sequence ", i, " out of range (", S_,
             " sequences in ", prefix_, ")");
  std::vector<int32_t> out(size_t(sequence_length(i)));
  read(i, 0, int64_t(out.size()), out.data());
  return out;
}

void IndexedDataset::check_type(size_t bytes, bool is_signed) const {
  const bool sgn = dtype_ == TokenDtype::int8 || dtype_ == TokenDtype::int16 ||
                   dtype_ == TokenDtype::int32 || dtype_ == TokenDtype::int64;
  KILN_CHECK(int(bytes) == token_dtype_size(dtype_) && is_signed == sgn, "indexed_dataset",
             "typed access with a ", bytes, "-byte ", is_signed ? "signed" : "unsigned",
             " type, but ", prefix_, " stores ", token_dtype_name(dtype_));
}

}  // namespace kiln

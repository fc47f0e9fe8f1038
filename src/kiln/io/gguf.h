// GGUF, ggml's model file: "GGUF", version (3), tensor count, metadata count, the metadata
// key/values, the tensor infos (name, dims fastest-first, ggml type, offset), padding to
// `general.alignment` (32 by default), then the data section. Source of truth: ggml's
// docs/gguf.md and gguf-py; files written here load in llama.cpp (tests/quant/).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/io/file.h"

namespace kiln::gguf {

// gguf_type: the type of a metadata value.
enum class ValueType : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};
const char* value_type_name(ValueType t);

// ggml_type values of the tensor types kiln reads (others are rejected by name): the float types,
// the 32-value block formats and the K-quants' 256-value super-blocks (quant/qtensor.h decodes
// every quantized one).
enum class TensorType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  bf16 = 30,
};
// True for a ggml_type value listed above.
bool tensor_type_known(uint32_t type);
const char* tensor_type_name(TensorType t);
// Elements per block (1, 32 or 256) and bytes per block.
int tensor_type_block(TensorType t);
size_t tensor_type_bytes(TensorType t);

// One metadata value. Scalars live in i/f/b/s by kind (every integer type in i, floats in f);
// arrays (of one element type, not nested) in ints/floats/strings, per elem_type.
struct Value {
  ValueType type = ValueType::u32;
  ValueType elem_type = ValueType::u32;  // arrays only
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  std::vector<int64_t> ints;  // integer and bool arrays
  std::vector<double> floats;
  std::vector<std::string> strings;

  static Value u32(uint32_t v) { return scalar(ValueType::u32, v); }
  static Value i32(int32_t v) { return scalar(ValueType::i32, v); }
  static Value u64(uint64_t v) { return scalar(ValueType::u64, int64_t(v)); }
  static Value f32(float v);
  static Value boolean(bool v);
  static Value str(std::string v);
  static Value str_array(std::vector<std::string> v);
  static Value int_array(ValueType elem, std::vector<int64_t> v);
  static Value f32_array(std::vector<double> v);

 private:
  static Value scalar(ValueType t, int64_t v);
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the fastest (a row of a matrix)
  TensorType type = TensorType::f32;
  uint64_t offset = 0;            // from the start of the data section
  const uint8_t* data = nullptr;  // into the mapping (reader)
  int64_t numel() const;
  size_t nbytes() const;
};

// A GGUF file, memory-mapped. Every count, length, offset and type is checked on open; errors
// name the file, the key or tensor and what is wrong. Tensor data are views into the mapping.
class File {
 public:
  static File open(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::vector<std::string>& keys() const { return keys_; }  // in file order
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  // Throws naming the key and the file when it is missing.
  const Value& get(const std::string& key) const;
  // Typed access: throws when the key is missing or of another kind (any integer type is fine
  // for get_int, any float for get_float, within range).
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const TensorInfo* find_tensor(const std::string& name) const;  // null if absent
  const TensorInfo& tensor(const std::string& name) const;       // throws naming it

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  uint32_t version_ = 3, alignment_ = 32;
  std::vector<std::string> keys_;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
};

// Builds a GGUF file in memory order and writes it atomically (AtomicFile: the path holds the
// old file or the whole new one). Tensor bytes are copied in when added.
class Writer {
 public:
  void set(const std::string& key, Value v);  // replaces an earlier value of the key
  // dims in ggml order (fastest first); `bytes` must be exactly the size the type implies.
  void add_tensor(const std::string& name, std::vector<int64_t> dims, TensorType type,
                  std::vector<uint8_t> bytes);
  void write(const std::string& path) const;

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  struct Entry {
    TensorInfo info;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> tensors_;
};

}  // namespace kiln::gguf

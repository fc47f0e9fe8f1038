#include "kiln/io/gguf.h"

#include <cstring>
#include <set>

#include "kiln/core/error.h"

namespace kiln::gguf {

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::u8:
      return "UINT8";
    case ValueType::i8:
      return "INT8";
    case ValueType::u16:
      return "UINT16";
    case ValueType::i16:
      return "INT16";
    case ValueType::u32:
      return "UINT32";
    case ValueType::i32:
      return "INT32";
    case ValueType::f32:
      return "FLOAT32";
    case ValueType::boolean:
      return "BOOL";
    case ValueType::string:
      return "STRING";
    case ValueType::array:
      return "ARRAY";
    case ValueType::u64:
      return "UINT64";
    case ValueType::i64:
      return "INT64";
    case ValueType::f64:
      return "FLOAT64";
  }
  return "?";
}

namespace {
struct TypeInfo {
  TensorType type;
  const char* name;
  int block;
  size_t bytes;
};
// ggml's block sizes (ggml-common.h): e.g. block_q4_K is {f16 d, dmin; u8 scales[12]; u8 qs[128]}.
constexpr TypeInfo kTypes[] = {
    {TensorType::f32, "F32", 1, 4},       {TensorType::f16, "F16", 1, 2},
    {TensorType::q4_0, "Q4_0", 32, 18},   {TensorType::q4_1, "Q4_1", 32, 20},
    {TensorType::q5_0, "Q5_0", 32, 22},   {TensorType::q5_1, "Q5_1", 32, 24},
    {TensorType::q8_0, "Q8_0", 32, 34},   {TensorType::q2_k, "Q2_K", 256, 84},
    {TensorType::q3_k, "Q3_K", 256, 110}, {TensorType::q4_k, "Q4_K", 256, 144},
    {TensorType::q5_k, "Q5_K", 256, 176}, {TensorType::q6_k, "Q6_K", 256, 210},
    {TensorType::q8_k, "Q8_K", 256, 292}, {TensorType::bf16, "BF16", 1, 2},
};
const TypeInfo* find_type(uint32_t t) {
  for (const TypeInfo& i : kTypes)
    if (uint32_t(i.type) == t) return &i;
  return nullptr;
}
}  // namespace

bool tensor_type_known(uint32_t type) {
  return find_type(type) != nullptr;
}

const char* tensor_type_name(TensorType t) {
  const TypeInfo* i = find_type(uint32_t(t));
  return i ? i->name : "?";
}

int tensor_type_block(TensorType t) {
  const TypeInfo* i = find_type(uint32_t(t));
  return i ? i->block : 1;
}

size_t tensor_type_bytes(TensorType t) {
  const TypeInfo* i = find_type(uint32_t(t));
  return i ? i->bytes : 0;
}

Value Value::scalar(ValueType t, int64_t v) {
  Value x;
  x.type = t;
  x.i = v;
  return x;
}
Value Value::f32(float v) {
  Value x;
  x.type = ValueType::f32;
  x.f = v;
  return x;
}
Value Value::boolean(bool v) {
  Value x;
  x.type = ValueType::boolean;
  x.b = v;
  return x;
}
Value Value::str(std::string v) {
  Value x;
  x.type = ValueType::string;
  x.s = std::move(v);
  return x;
}
Value Value::str_array(std::vector<std::string> v) {
  Value x;
  x.type = ValueType::array;
  x.elem_type = ValueType::string;
  x.strings = std::move(v);
  return x;
}
Value Value::int_array(ValueType elem, std::vector<int64_t> v) {
  Value x;
  x.type = ValueType::array;
  x.elem_type = elem;
  x.ints = std::move(v);
  return x;
}
Value Value::f32_array(std::vector<double> v) {
  Value x;
  x.type = ValueType::array;
  x.elem_type = ValueType::f32;
  x.floats = std::move(v);
  return x;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

size_t TensorInfo::nbytes() const {
  return size_t(numel() / tensor_type_block(type)) * tensor_type_bytes(type);
}

namespace {

bool is_int(ValueType t) {
  switch (t) {
    case ValueType::u8:
    case ValueType::i8:
    case ValueType::u16:
    case ValueType::i16:
    case ValueType::u32:
    case ValueType::i32:
    case ValueType::u64:
    case ValueType::i64:
      return true;
    default:
      return false;
  }
}

size_t scalar_bytes(ValueType t) {
  switch (t) {
    case ValueType::u8:
    case ValueType::i8:
    case ValueType::boolean:
      return 1;
    case ValueType::u16:
    case ValueType::i16:
      return 2;
    case ValueType::u32:
    case ValueType::i32:
    case ValueType::f32:
      return 4;
    case ValueType::u64:
    case ValueType::i64:
    case ValueType::f64:
      return 8;
    default:
      return 0;
  }
}

// Reads little-endian values from the mapping; every read is bounds-checked, and running off the
// end says the file is truncated and what was being read.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* p, size_t n) : path_(path), p_(p), n_(n) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  void need(size_t bytes, const std::string& what) const {
    if (bytes > remaining())
      fail("gguf", "'", path_, "' is truncated: reading ", what, " needs ", bytes,
           " bytes at offset ", pos_, " but the file has ", n_,
           " bytes; re-export or re-download it");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (length)");
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }
  int64_t integer(ValueType t, const std::string& what) {
    switch (t) {
      case ValueType::u8:
        return read<uint8_t>(what);
      case ValueType::i8:
        return read<int8_t>(what);
      case ValueType::u16:
        return read<uint16_t>(what);
      case ValueType::i16:
        return read<int16_t>(what);
      case ValueType::u32:
        return read<uint32_t>(what);
      case ValueType::i32:
        return read<int32_t>(what);
      case ValueType::u64:
        return int64_t(read<uint64_t>(what));
      default:
        return read<int64_t>(what);
    }
  }
  Value value(ValueType t, const std::string& what, bool in_array) {
    Value v;
    v.type = t;
    if (is_int(t)) {
      v.i = integer(t, what);
    } else if (t == ValueType::f32) {
      v.f = read<float>(what);
    } else if (t == ValueType::f64) {
      v.f = read<double>(what);
    } else if (t == ValueType::boolean) {
      v.b = read<uint8_t>(what) != 0;
    } else if (t == ValueType::string) {
      v.s = string(what);
    } else if (t == ValueType::array && !in_array) {
      const uint32_t et = read<uint32_t>(what + " (element type)");
      KILN_CHECK(et <= 12, "gguf", "'", path_, "': ", what, " has unknown element type ", et);
      v.elem_type = ValueType(et);
      KILN_CHECK(v.elem_type != ValueType::array, "gguf", "'", path_, "': ", what,
                 " is an array of arrays, which kiln does not read");
      const uint64_t len = read<uint64_t>(what + " (length)");
      // Each element takes at least one byte (8 for a string's length): a length beyond the
      // file is corruption, caught before allocating.
      const size_t min_bytes = v.elem_type == ValueType::string ? 8 : scalar_bytes(v.elem_type);
      if (len > remaining() / min_bytes)
        fail("gguf", "'", path_, "' is truncated: ", what, " declares ", len,
             " elements (at least ", min_bytes, " bytes each) at offset ", pos_, " but only ",
             remaining(), " bytes remain; re-export or re-download it");
      for (uint64_t k = 0; k < len; ++k) {
        if (v.elem_type == ValueType::string) {
          v.strings.push_back(string(what));
        } else if (v.elem_type == ValueType::f32) {
          v.floats.push_back(read<float>(what));
        } else if (v.elem_type == ValueType::f64) {
          v.floats.push_back(read<double>(what));
        } else if (v.elem_type == ValueType::boolean) {
          v.ints.push_back(read<uint8_t>(what));
        } else {
          v.ints.push_back(integer(v.elem_type, what));
        }
      }
    } else {
      fail("gguf", "'", path_, "': ", what, " has unknown value type ", uint32_t(t),
           ": the file is corrupt or from a newer GGUF version");
    }
    return v;
  }

 private:
  const std::string& path_;
  const uint8_t* p_;
  size_t n_, pos_ = 0;
};

}  // namespace

File File::open(const std::string& path) {
  File f;
  f.path_ = path;
  KILN_CHECK(file_exists(path), "gguf", "cannot open '", path, "': no such file");
  f.map_ = MappedFile::open(path);
  Cursor c(path, f.map_->data(), f.map_->size());
  c.need(4, "the magic");
  KILN_CHECK(std::memcmp(f.map_->data(), "GGUF", 4) == 0, "gguf", "'", path,
             "' is not a GGUF file: it does not start with the magic \"GGUF\"");
  c.read<uint32_t>("the magic");
  f.version_ = c.read<uint32_t>("the version");
  KILN_CHECK(f.version_ == 2 || f.version_ == 3, "gguf", "'", path, "' has GGUF version ",
             f.version_, "; kiln reads versions 2 and 3");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // Each key/value takes at least 12 bytes and each tensor info at least 28.
  if (n_kv > c.remaining() / 12 || n_tensors > c.remaining() / 28 ||
      n_kv * 12 + n_tensors * 28 > c.remaining())
    fail("gguf", "'", path, "' is truncated or corrupt: it declares ", n_kv, " metadata keys and ",
         n_tensors, " tensors, which cannot fit in its ", f.map_->size(), " bytes");
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.string("metadata key #" + std::to_string(k));
    const uint32_t t = c.read<uint32_t>("the type of key '" + key + "'");
    KILN_CHECK(t <= 12, "gguf", "'", path, "': key '", key, "' has unknown value type ", t);
    Value v = c.value(ValueType(t), "key '" + key + "'", false);
    KILN_CHECK(f.kv_.count(key) == 0, "gguf", "'", path, "': key '", key, "' appears twice");
    f.keys_.push_back(key);
    f.kv_.emplace(std::move(key), std::move(v));
  }
  if (f.has("general.alignment")) {
    const int64_t a = f.get_int("general.alignment");
    KILN_CHECK(a > 0 && a <= (1 << 20) && (a & (a - 1)) == 0, "gguf", "'", path,
               "': general.alignment is ", a, "; it must be a power of two");
    f.alignment_ = uint32_t(a);
  }
  for (uint64_t k = 0; k < n_tensors; ++k) {
    TensorInfo ti;
    ti.name = c.string("the name of tensor #" + std::to_string(k));
    const std::string what = "tensor '" + ti.name + "'";
    const uint32_t n_dims = c.read<uint32_t>(what + " (dimension count)");
    KILN_CHECK(n_dims >= 1 && n_dims <= 4, "gguf", "'", path, "': ", what, " has ", n_dims,
               " dimensions; GGUF allows 1 to 4");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>(what + " (dimensions)");
      KILN_CHECK(dim >= 1 && dim < (uint64_t(1) << 40) && numel < (int64_t(1) << 40) / int64_t(dim),
                 "gguf", "'", path, "': ", what, " has dimension ", d, " = ", dim,
                 ", which is zero or absurdly large: the file is corrupt");
      ti.dims.push_back(int64_t(dim));
      numel *= int64_t(dim);
    }
    const uint32_t type = c.read<uint32_t>(what + " (type)");
    KILN_CHECK(tensor_type_known(type), "gguf", "'", path, "': ", what, " has ggml type ", type,
               ", which kiln does not support: kiln reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, "
               "Q8_0 and the K-quants Q2_K..Q8_K; re-quantize the model to one of those "
               "(llama-quantize)");
    ti.type = TensorType(type);
    KILN_CHECK(ti.dims[0] % tensor_type_block(ti.type) == 0, "gguf", "'", path, "': ", what, " is ",
               tensor_type_name(ti.type), " but its row length ", ti.dims[0],
               " is not a multiple of the block size ", tensor_type_block(ti.type));
    ti.offset = c.read<uint64_t>(what + " (offset)");
    KILN_CHECK(ti.offset % f.alignment_ == 0, "gguf", "'", path, "': ", what, " starts at offset ",
               ti.offset, ", not a multiple of the alignment ", f.alignment_);
    KILN_CHECK(f.by_name_.count(ti.name) == 0, "gguf", "'", path, "': ", what, " appears twice");
    f.by_name_[ti.name] = f.tensors_.size();
    f.tensors_.push_back(std::move(ti));
  }
  const size_t data_start = (c.pos() + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  const size_t size = f.map_->size();
  for (TensorInfo& ti : f.tensors_) {
    const uint64_t end = data_start + ti.offset + ti.nbytes();
    KILN_CHECK(ti.offset <= size && end <= size, "gguf", "'", path, "' is truncated: tensor '",
               ti.name, "' ends at byte ", end, " but the file has ", size,
               " bytes; re-export or re-download it");
    ti.data = f.map_->data() + data_start + ti.offset;
  }
  return f;
}

const Value& File::get(const std::string& key) const {
  auto it = kv_.find(key);
  KILN_CHECK(it != kv_.end(), "gguf", "'", path_, "' has no metadata key '", key,
             "': the file is incomplete or not a model kiln can read");
  return it->second;
}

int64_t File::get_int(const std::string& key) const {
  const Value& v = get(key);
  KILN_CHECK(is_int(v.type), "gguf", "'", path_, "': key '", key, "' is ", value_type_name(v.type),
             ", expected an integer");
  return v.i;
}

double File::get_float(const std::string& key) const {
  const Value& v = get(key);
  KILN_CHECK(v.type == ValueType::f32 || v.type == ValueType::f64, "gguf", "'", path_, "': key '",
             key, "' is ", value_type_name(v.type), ", expected a float");
  return v.f;
}

const std::string& File::get_string(const std::string& key) const {
  const Value& v = get(key);
  KILN_CHECK(v.type == ValueType::string, "gguf", "'", path_, "': key '", key, "' is ",
             value_type_name(v.type), ", expected a string");
  return v.s;
}

const TensorInfo* File::find_tensor(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  KILN_CHECK(t, "gguf", "'", path_, "' has no tensor '", name, "' (it has ", tensors_.size(),
             " tensors", tensors_.empty() ? "" : ", e.g. '" + tensors_[0].name + "'",
             "): the model is incomplete or of another architecture");
  return *t;
}

void Writer::set(const std::string& key, Value v) {
  for (auto& [k, old] : kv_)
    if (k == key) {
      old = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void Writer::add_tensor(const std::string& name, std::vector<int64_t> dims, TensorType type,
                        std::vector<uint8_t> bytes) {
  for (const auto& e : tensors_)
    KILN_CHECK(e.info.name != name, "gguf", "tensor '", name, "' added twice");
  Entry e;
  e.info.name = name;
  e.info.dims = std::move(dims);
  e.info.type = type;
  KILN_CHECK(!e.info.dims.empty() && e.info.dims.size() <= 4 &&
                 e.info.dims[0] % tensor_type_block(type) == 0,
             "gguf", "tensor '", name, "': bad dimensions for ", tensor_type_name(type));
  KILN_CHECK(bytes.size() == e.info.nbytes(), "gguf", "tensor '", name, "' has ", bytes.size(),
             " bytes but its shape and type need ", e.info.nbytes());
  e.bytes = std::move(bytes);
  tensors_.push_back(std::move(e));
}

namespace {

void put_bytes(std::string& out, const void* p, size_t n) {
  out.append(reinterpret_cast<const char*>(p), n);
}
template <typename T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof(T));
}
void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}
void put_int(std::string& out, ValueType t, int64_t v) {
  switch (t) {
    case ValueType::u8:
    case ValueType::i8:
    case ValueType::boolean:
      put<uint8_t>(out, uint8_t(v));
      break;
    case ValueType::u16:
    case ValueType::i16:
      put<uint16_t>(out, uint16_t(v));
      break;
    case ValueType::u32:
    case ValueType::i32:
      put<uint32_t>(out, uint32_t(v));
      break;
    default:
      put<uint64_t>(out, uint64_t(v));
      break;
  }
}
void put_value(std::string& out, const Value& v) {
  if (is_int(v.type)) {
    put_int(out, v.type, v.i);
  } else if (v.type == ValueType::f32) {
    put<float>(out, float(v.f));
  } else if (v.type == ValueType::f64) {
    put<double>(out, v.f);
  } else if (v.type == ValueType::boolean) {
    put<uint8_t>(out, v.b ? 1 : 0);
  } else if (v.type == ValueType::string) {
    put_string(out, v.s);
  } else {
    put<uint32_t>(out, uint32_t(v.elem_type));
    if (v.elem_type == ValueType::string) {
      put<uint64_t>(out, v.strings.size());
      for (const auto& s : v.strings) put_string(out, s);
    } else if (v.elem_type == ValueType::f32 || v.elem_type == ValueType::f64) {
      put<uint64_t>(out, v.floats.size());
      for (double x : v.floats) {
        if (v.elem_type == ValueType::f32) {
          put<float>(out, float(x));
        } else {
          put<double>(out, x);
        }
      }
    } else {
      put<uint64_t>(out, v.ints.size());
      for (int64_t x : v.ints) put_int(out, v.elem_type, x);
    }
  }
}

}  // namespace

void Writer::write(const std::string& path) const {
  uint32_t alignment = 32;
  for (const auto& [k, v] : kv_)
    if (k == "general.alignment") alignment = uint32_t(v.i);
  std::string head;
  put_bytes(head, "GGUF", 4);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_string(head, k);
    put<uint32_t>(head, uint32_t(v.type));
    put_value(head, v);
  }
  uint64_t offset = 0;
  for (const auto& e : tensors_) {
    put_string(head, e.info.name);
    put<uint32_t>(head, uint32_t(e.info.dims.size()));
    for (int64_t d : e.info.dims) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(e.info.type));
    put<uint64_t>(head, offset);
    offset += (e.bytes.size() + alignment - 1) / alignment * alignment;
  }
  head.resize((head.size() + alignment - 1) / alignment * alignment, '\0');
  AtomicFile out(path);
  out.write(head);
  static const char zeros[64] = {};
  for (const auto& e : tensors_) {
    out.write(e.bytes.data(), e.bytes.size());
    size_t pad = (alignment - e.bytes.size() % alignment) % alignment;
    while (pad > 0) {
      const size_t n = std::min(pad, sizeof zeros);
      out.write(zeros, n);
      pad -= n;
    }
  }
  out.commit();
}

}  // namespace kiln::gguf

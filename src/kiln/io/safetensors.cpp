#include "kiln/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <set>
#include <string_view>

#include <nlohmann/json.hpp>

#include "kiln/core/checked_math.h"
#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"

namespace kiln {

static_assert(
    std::endian::native == std::endian::little,
    "safetensors data is little-endian; kiln reads it in place only on little-endian hosts");

namespace {

using ojson = nlohmann::ordered_json;

// The reference implementation's limit; a larger header means a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kSupported = "F32, F16, BF16, I32, I64, U8, I8, U16";

// fail("safetensors", "<path>: ", ...): every safetensors error names the file first.
template <typename... Args>
[[noreturn]] void fail_file(const std::string& path, Args&&... args) {
  fail("safetensors", path, ": ", std::forward<Args>(args)...);
}

// The safetensors dtype names kiln can hold, and the ones it knows but cannot.
bool parse_dtype(std::string_view name, DType& out) {
  static const std::pair<std::string_view, DType> kTable[] = {
      {"F32", DType::f32}, {"F16", DType::f16}, {"BF16", DType::bf16}, {"I32", DType::i32},
      {"I64", DType::i64}, {"U8", DType::u8},   {"I8", DType::i8},     {"U16", DType::u16}};
  for (auto& [n, t] : kTable) {
    if (n == name) {
      out = t;
      return true;
    }
  }
  return false;
}

bool known_unsupported_dtype(std::string_view name) {
  static const std::string_view kNames[] = {"F64", "BOOL",    "I16",     "U32",
                                            "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                            "F4",  "F6_E2M3", "F6_E3M2", "C64"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

// A non-negative integer that fits in int64 (JSON numbers may be negative, fractional or huge).
bool as_size(const ojson& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    out = uint64_t(i);
  } else {
    return false;
  }
  return out <= uint64_t(std::numeric_limits<int64_t>::max());
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // offsets into the data section
};

Entry parse_entry(const std::string& path, const std::string& name, const ojson& v) {
  auto bad = [&](auto&&... args) {
    fail_file(path, "tensor '", name, "' ", args..., "; the header is corrupt: re-export the file");
  };
  if (!v.is_object()) bad("is a JSON ", v.type_name(), ", not an object");
  Entry e;
  e.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end()) bad("has no \"dtype\"");
  if (!dt->is_string()) bad("has a \"dtype\" that is not a string: ", dt->dump());
  std::string dname = dt->get<std::string>();
  if (!parse_dtype(dname, e.dtype)) {
    if (known_unsupported_dtype(dname)) {
      fail_file(path, "tensor '", name, "' has dtype ", dname, ", which kiln does not support (",
                kSupported, "); convert it (e.g. to F32 or BF16) before exporting");
    }
    fail_file(path, "tensor '", name, "' has unknown dtype '", dname, "' (kiln reads ", kSupported,
              "); re-export the file with one of those");
  }

  auto sh = v.find("shape");
  if (sh == v.end()) bad("has no \"shape\"");
  if (!sh->is_array()) bad("has a \"shape\" that is not an array: ", sh->dump());
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    uint64_t n;
    if (!as_size(d, n))
      bad("has shape ", sh->dump(), ", whose entries must be non-negative integers");
    const auto next = checked_mul(numel, n);
    if (!next) bad("has shape ", sh->dump(), ", too large to address");
    numel = *next;
    e.shape.push_back(int64_t(n));
  }
  const auto bytes = checked_mul(numel, uint64_t(dtype_size(e.dtype)));
  if (!bytes) bad("has shape ", sh->dump(), ", too large to address");
  const uint64_t nbytes = *bytes;

  auto off = v.find("data_offsets");
  if (off == v.end()) bad("has no \"data_offsets\"");
  if (!off->is_array() || off->size() != 2 || !as_size((*off)[0], e.begin) ||
      !as_size((*off)[1], e.end)) {
    bad("has \"data_offsets\" ", off->dump(), ", which must be [begin, end] byte offsets");
  }
  if (e.begin > e.end) bad("has data_offsets ", off->dump(), " whose begin is after its end");
  if (e.end - e.begin != nbytes) {
    bad("is ", dname, " ", shape_str(e.shape), ", which is ", nbytes,
        " bytes, but its data_offsets ", off->dump(), " span ", e.end - e.begin, " bytes");
  }
  return e;
}

std::map<std::string, std::string> parse_metadata(const std::string& path, const ojson& v) {
  std::map<std::string, std::string> out;
  if (v.is_null()) return out;
  if (!v.is_object()) {
    fail_file(path, "\"__metadata__\" is a JSON ", v.type_name(),
              ", but it must be an object of strings; re-export the file");
  }
  for (const auto& [k, s] : v.items()) {
    if (!s.is_string()) {
      fail_file(path, "\"__metadata__\" key '", k, "' holds a JSON ", s.type_name(),
                ", but metadata values must be strings; re-export the file (JSON-encode the value "
                "into a string)");
    }
    out[k] = s.get<std::string>();
  }
  return out;
}

}  // namespace

const Tensor& SafeTensorsFile::get(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  // Show names that end like the one asked for (its last two dotted parts, e.g. "q_proj.weight"):
  // the usual mismatch is a prefix such as "model.". Else show the first few.
  size_t cut = name.rfind('.');
  if (cut != std::string::npos && cut > 0) cut = name.rfind('.', cut - 1);
  std::string tail = cut == std::string::npos ? name : name.substr(cut + 1);
  std::vector<std::string> shown;
  for (const auto& n : names) {
    if (shown.size() < 5 && n.ends_with(tail)) shown.push_back(n);
  }
  const bool similar = !shown.empty();
  if (!similar) shown.assign(names.begin(), names.begin() + std::min<size_t>(names.size(), 5));
  std::string list;
  for (const auto& n : shown) list += (list.empty() ? "'" : ", '") + n + "'";
  fail("safetensors", path, ": no tensor '", name, "' among its ", names.size(), " tensors (",
       similar ? "similar names" : "first names", ": ", list.empty() ? "none" : list,
       "); check the name, or that the checkpoint is for this model");
}

SafeTensorsFile load_safetensors(const std::string& path) {
  std::shared_ptr<MappedFile> map = MappedFile::open(path);
  const uint64_t file_size = map->size();
  if (file_size < 8) {
    fail_file(path, "the file has ", file_size,
              " bytes, fewer than the 8-byte header length: it is truncated or not a safetensors "
              "file; re-export it");
  }
  uint64_t n;
  std::memcpy(&n, map->data(), 8);
  if (n > kMaxHeaderBytes) {
    fail_file(path, "the header length field says ", n, " bytes, over the ", kMaxHeaderBytes,
              "-byte limit: the file is corrupt or not a safetensors file");
  }
  if (n > file_size - 8) {
    fail_file(path, "the header is ", n, " bytes but the file has only ", file_size - 8,
              " bytes after the length field: the file is truncated; re-export it");
  }
  const char* hbeg = reinterpret_cast<const char*>(map->data()) + 8;
  std::string_view header(hbeg, n);

  // JSON text never holds a raw NUL, but nlohmann stops at one as if the input ended there.
  if (size_t nul = header.find('\0'); nul != std::string_view::npos) {
    fail_file(path, "the header is not valid JSON at header byte ", nul,
              ": a NUL byte (padding must be spaces); the file is corrupt or not a safetensors "
              "file");
  }
  // Parse with a callback that catches duplicate top-level keys, which JSON parsers silently merge.
  std::set<std::string> keys;
  std::string duplicate;
  check_json_depth("safetensors", path, header);  // error messages dump() parts of it
  ojson::parser_callback_t on_event = [&](int depth, ojson::parse_event_t ev, ojson& parsed) {
    if (ev == ojson::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !keys.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  ojson j;
  try {
    j = ojson::parse(header.begin(), header.end(), on_event);
  } catch (const nlohmann::json::parse_error& e) {
    size_t at = e.byte > 0 ? size_t(e.byte - 1) : 0;
    fail_file(path, "the header is not valid JSON at header byte ", at, ": ", json_error_reason(e),
              "; the file is corrupt or not a safetensors file");
  }
  if (!j.is_object()) {
    fail_file(path, "the header is a JSON ", j.type_name(),
              ", not an object: the file is corrupt or not a safetensors file");
  }
  if (!duplicate.empty()) {
    fail_file(path, "the header names '", duplicate, "' twice; re-export the file");
  }

  SafeTensorsFile out;
  out.path = path;
  std::vector<Entry> entries;
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      out.metadata = parse_metadata(path, value);
    } else {
      entries.push_back(parse_entry(path, key, value));
    }
  }

  // The tensors must tile the data section exactly; sort by offset and walk it. Stable, so
  // zero-byte tensors sharing an offset keep header order.
  const uint64_t data_start = 8 + n, data_size = file_size - data_start;
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (const Entry& e : entries) {
    if (e.end > data_size) {
      fail_file(path, "tensor '", e.name, "' ends at byte ", data_start + e.end,
                " but the file has ", file_size, " bytes: the file is truncated; re-export it");
    }
  }
  uint64_t covered = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < covered) {
      fail_file(path, "tensors '", prev->name, "' (data bytes ", prev->begin, "..", prev->end,
                ") and '", e.name, "' (data bytes ", e.begin, "..", e.end,
                ") overlap; the header is corrupt: re-export the file");
    }
    if (e.begin > covered) {
      fail_file(path, "data bytes ", covered, "..", e.begin,
                " belong to no tensor (a hole before '", e.name,
                "'), which the safetensors format forbids; re-export the file");
    }
    covered = e.end;
    prev = &e;
  }
  if (covered != data_size) {
    fail_file(path, "the data section has ", data_size, " bytes but the tensors cover only ",
              covered, ": ", data_size - covered,
              " trailing bytes belong to no tensor, which the safetensors format forbids; "
              "re-export the file");
  }

  std::shared_ptr<void> keep = map;
  for (const Entry& e : entries) {
    uint8_t* p = map->mutable_data() + data_start + e.begin;
    Tensor t;
    if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
      t = Tensor::view(p, e.shape, e.dtype, keep);
    } else {
      t = Tensor::empty(e.shape, e.dtype);
      std::memcpy(t.raw(), p, e.end - e.begin);
    }
    out.names.push_back(e.name);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps insertion order, so the header reads exactly as Python's writer emits it.
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  std::set<std::string_view> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    KILN_CHECK(name != "__metadata__", "safetensors", path,
               ": '__metadata__' is reserved for the metadata map; rename the tensor");
    KILN_CHECK(seen.insert(name).second, "safetensors", path, ": tensor '", name,
               "' is given twice; tensor names must be unique");
    KILN_CHECK(t.device() == Device::cpu, "safetensors", path, ": tensor '", name, "' is on ",
               device_name(t.device()), "; copy it to the CPU before saving");
    DType check;
    KILN_CHECK(parse_dtype(dtype_name(t.dtype()), check), "safetensors", path, ": tensor '", name,
               "' has dtype ", dtype_name(t.dtype()),
               ", which safetensors cannot store; dequantize it or save it as GGUF");
    KILN_CHECK(t.defined() || t.nbytes() == 0, "safetensors", path, ": tensor '", name,
               "' has no data (a default-constructed Tensor); allocate it before saving");
    ojson info = ojson::object();
    info["dtype"] = std::string(dtype_name(t.dtype()));
    info["shape"] = t.shape();
    info["data_offsets"] = ojson::array({offset, offset + t.nbytes()});
    header[name] = std::move(info);
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::type_error& e) {
    fail("safetensors", path, ": cannot write the header: ", json_error_reason(e),
         "; tensor names and metadata must be valid UTF-8");
  }
  // Pad with spaces so the data section starts 8-byte aligned (as the reference writer does).
  text.append((8 - text.size() % 8) % 8, ' ');

  AtomicFile f(path);
  uint64_t n = text.size();
  f.write(&n, 8);
  f.write(text);
  for (const auto& [name, t] : tensors) f.write(t.raw(), t.nbytes());
  f.commit();
}

}  // namespace kiln

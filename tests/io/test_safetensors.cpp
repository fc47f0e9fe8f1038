#include "kiln/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "io/io_test_util.h"
#include "kiln/core/error.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

Tensor f32_tensor(Shape shape, std::initializer_list<float> values) {
  Tensor t = Tensor::empty(std::move(shape), DType::f32);
  EXPECT_EQ(size_t(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.f32());
  return t;
}

// A tensor of `dtype` whose bytes count 0, 1, 2, ... (distinct per tensor with `seed`).
Tensor byte_pattern(Shape shape, DType dtype, int seed = 0) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  auto* p = t.data<uint8_t>();
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(i * 7 + seed);
  return t;
}

std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.raw()), t.nbytes());
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// A safetensors file from a header and a data section, exactly as given (no padding added).
std::string raw_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// Writes raw bytes to dir/name and returns the load error's message.
std::string load_error(const TempDir& dir, const std::string& bytes,
                       const std::string& name = "bad.safetensors") {
  std::string path = dir.file(name);
  write_file_atomic(path, bytes);
  return error_of([&] { load_safetensors(path); });
}

// --- round trips -------------------------------------------------------------------------------

TEST(SafeTensors, RoundTripsEveryDtypeAndShapeKind) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> in = {
      {"w.f32", f32_tensor({2, 3}, {1, -2, 3.5f, 0, 1e-30f, -0.0f})},
      {"w.i64", byte_pattern({3}, DType::i64, 1)},
      {"w.i32", byte_pattern({2, 2}, DType::i32, 2)},
      {"scalar", f32_tensor({}, {42.0f})},           // 0-d: shape [], one element
      {"empty", Tensor::empty({0, 4}, DType::f32)},  // zero elements, zero bytes
      {"w.bf16", byte_pattern({4}, DType::bf16, 3)},
      {"w.f16", byte_pattern({2}, DType::f16, 4)},
      {"w.u16", byte_pattern({2}, DType::u16, 5)},
      {"w.u8", byte_pattern({5}, DType::u8, 6)},
      {"w.i8", byte_pattern({3}, DType::i8, 7)},
  };
  std::string path = dir.file("m.safetensors");
  save_safetensors(path, in, {{"format", "pt"}, {"note", "round trip"}});

  SafeTensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.path, path);
  ASSERT_EQ(f.names.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const auto& [name, t] = in[i];
    EXPECT_EQ(f.names[i], name);  // file order == the order given to save
    const Tensor& got = f.get(name);
    EXPECT_EQ(got.dtype(), t.dtype()) << name;
    EXPECT_EQ(got.shape(), t.shape()) << name;
    EXPECT_EQ(bytes_of(got), bytes_of(t)) << name;
    EXPECT_TRUE(got.defined()) << name;
  }
  EXPECT_EQ(f.get("scalar").ndim(), 0);
  EXPECT_EQ(f.get("scalar").f32()[0], 42.0f);
  EXPECT_EQ(f.get("empty").numel(), 0);
  EXPECT_EQ(f.metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"note", "round trip"}}));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"m.safetensors"});  // no temp file left
}

TEST(SafeTensors, RoundTripsManyTensors) {
  TempDir dir;
  std::vector<std::pair<std::string, Tensor>> in;
  for (int i = 0; i < 500; ++i) {
    in.push_back({"model.layers." + std::to_string(i) + ".weight",
                  byte_pattern({int64_t(i % 7), 3}, DType::f32, i)});
  }
  save_safetensors(dir.file("many.safetensors"), in);
  SafeTensorsFile f = load_safetensors(dir.file("many.safetensors"));
  ASSERT_EQ(f.tensors.size(), 500u);
  EXPECT_TRUE(f.metadata.empty());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(f.names[i], in[i].first);
    EXPECT_EQ(bytes_of(f.get(in[i].first)), bytes_of(in[i].second));
  }
}

TEST(SafeTensors, EmptyFileOfNoTensors) {
  TempDir dir;
  save_safetensors(dir.file("none.safetensors"), {});
  SafeTensorsFile f = load_safetensors(dir.file("none.safetensors"));
  EXPECT_TRUE(f.names.empty());
  EXPECT_TRUE(f.tensors.empty());
}

TEST(SafeTensors, TensorsAreZeroCopyViewsThatKeepTheMappingAlive) {
  TempDir dir;
  std::string path = dir.file("v.safetensors");
  save_safetensors(path, {{"a", f32_tensor({3}, {1, 2, 3})}});
  Tensor a;
  {
    SafeTensorsFile f = load_safetensors(path);
    a = f.get("a");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.raw()) % 4, 0u);
  }
  std::filesystem::remove(path);  // the mapping, held by the tensor, outlives the file and struct
  EXPECT_EQ(a.f32()[2], 3.0f);
  a.f32()[0] = 9.0f;  // copy-on-write: writable, never written back
  EXPECT_EQ(a.f32()[0], 9.0f);
}

TEST(SafeTensors, WritingATensorNeverChangesTheFile) {
  TempDir dir;
  std::string path = dir.file("cow.safetensors");
  save_safetensors(path, {{"a", f32_tensor({2}, {1, 2})}});
  std::string before = read_file(path);
  load_safetensors(path).get("a").f32()[1] = 5.0f;
  EXPECT_EQ(read_file(path), before);
}

TEST(SafeTensors, MisalignedTensorIsCopiedToAlignedStorage) {
  TempDir dir;
  // BF16 x3 (6 bytes) first puts the F32 at data offset 6, not a multiple of 4.
  save_safetensors(dir.file("u.safetensors"),
                   {{"h", byte_pattern({3}, DType::bf16)}, {"f", f32_tensor({2}, {1.5f, -4})}});
  SafeTensorsFile f = load_safetensors(dir.file("u.safetensors"));
  const Tensor& t = f.get("f");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 4, 0u);
  EXPECT_EQ(t.f32()[0], 1.5f);
  EXPECT_EQ(t.f32()[1], -4.0f);
}

TEST(SafeTensors, GetNamesTheMissingTensorAndSimilarOnes) {
  TempDir dir;
  std::string path = dir.file("g.safetensors");
  save_safetensors(path, {{"model.layers.0.q_proj.weight", f32_tensor({1}, {1})},
                          {"model.norm.weight", f32_tensor({1}, {1})}});
  SafeTensorsFile f = load_safetensors(path);
  EXPECT_TRUE(f.contains("model.norm.weight"));
  std::string msg = error_of([&] { f.get("layers.0.q_proj.weight"); });
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "no tensor 'layers.0.q_proj.weight'"));
  EXPECT_TRUE(has(msg, "similar names: 'model.layers.0.q_proj.weight'"));
  msg = error_of([&] { f.get("lm_head.weight"); });
  EXPECT_TRUE(has(msg, "first names: 'model.layers.0.q_proj.weight', 'model.norm.weight'"));
}

// --- known answers: bytes as the reference (Python/Rust) library writes them
// ----------------------

TEST(SafeTensors, KnownAnswerFileParsesAndSavesByteForByte) {
  // Compact JSON, "__metadata__" first, keys dtype/shape/data_offsets, padded with spaces to a
  // multiple of 8 (139 -> 144 bytes), then F32 [1, -2] and BF16 scalar 1.5 (0x3fc0), little-endian.
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[8,10]}}     ";
  const std::string expected = std::string("\x90\0\0\0\0\0\0\0", 8) + header +
                               std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0\xc0\x3f", 10);
  ASSERT_EQ(header.size(), 144u);

  TempDir dir;
  write_file_atomic(dir.file("known.safetensors"), expected);
  SafeTensorsFile f = load_safetensors(dir.file("known.safetensors"));
  EXPECT_EQ(f.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.get("a").shape(), Shape{2});
  EXPECT_EQ(f.get("a").f32()[0], 1.0f);
  EXPECT_EQ(f.get("a").f32()[1], -2.0f);
  EXPECT_EQ(f.get("b").dtype(), DType::bf16);
  EXPECT_EQ(f.get("b").ndim(), 0);
  EXPECT_EQ(bf16_to_f32(f.get("b").data<uint16_t>()[0]), 1.5f);

  Tensor b = Tensor::empty({}, DType::bf16);
  b.data<uint16_t>()[0] = f32_to_bf16(1.5f);
  save_safetensors(dir.file("again.safetensors"), {{"a", f32_tensor({2}, {1, -2})}, {"b", b}},
                   {{"format", "pt"}});
  EXPECT_EQ(read_file(dir.file("again.safetensors")), expected);
}

// The reference library's own serialization tests (safetensors/src/tensor.rs), as byte strings.
TEST(SafeTensors, MatchesReferenceLibraryVectors) {
  TempDir dir;
  std::string data;
  for (float v : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f}) data.append(reinterpret_cast<char*>(&v), 4);
  Tensor six = Tensor::empty({1, 2, 3}, DType::f32);
  std::memcpy(six.raw(), data.data(), 24);

  struct Case {
    std::vector<std::pair<std::string, Tensor>> tensors;
    std::map<std::string, std::string> metadata;
    std::string expected;
  };
  std::vector<Case> cases = {
      {{}, {}, raw_file("{}      ")},
      {{}, {{"framework", "pt"}}, raw_file("{\"__metadata__\":{\"framework\":\"pt\"}}     ")},
      // 64-byte header: no padding.
      {{{"attn.0", six}},
       {},
       raw_file("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}",
                data)},
      // 65-byte header: 7 spaces.
      {{{"attn0", six.reshape({1, 1, 2, 3})}},
       {},
       raw_file(
           "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ",
           data)},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string path = dir.file("ref" + std::to_string(i) + ".safetensors");
    save_safetensors(path, cases[i].tensors, cases[i].metadata);
    EXPECT_EQ(read_file(path), cases[i].expected) << "case " << i;
    SafeTensorsFile f = load_safetensors(path);
    EXPECT_EQ(f.names.size(), cases[i].tensors.size());
    EXPECT_EQ(f.metadata, cases[i].metadata);
  }
}

TEST(SafeTensors, HeaderOrderNeedNotMatchDataOrder) {
  // Older writers order the header by name; tensors come back in data order.
  TempDir dir;
  std::string path = dir.file("o.safetensors");
  write_file_atomic(path, raw_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]},"
                                   "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}",
                                   "xyz"));
  SafeTensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.names, (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(bytes_of(f.get("a")), "z");
  EXPECT_EQ(bytes_of(f.get("b")), "xy");
}

// --- corrupt files: each error names the file and the problem ------------------------------------

// A header {"name": {body}, ...} from (name, body) pairs, for hand-made corrupt files.
std::string header(std::initializer_list<std::pair<std::string, std::string>> entries) {
  std::string out = "{";
  for (const auto& [name, body] : entries) {
    if (out.size() > 1) out += ',';
    out.append("\"").append(name).append("\":{").append(body).append("}");
  }
  return out + "}";
}

TEST(SafeTensorsCorrupt, ShorterThanTheLengthField) {
  TempDir dir;
  std::string msg = load_error(dir, "abc");
  EXPECT_TRUE(has(msg, "[safetensors] " + dir.file("bad.safetensors") + ": "));
  EXPECT_TRUE(has(msg, "has 3 bytes, fewer than the 8-byte header length"));
}

TEST(SafeTensorsCorrupt, EmptyFile) {
  TempDir dir;
  EXPECT_TRUE(has(load_error(dir, ""), "has 0 bytes"));
}

TEST(SafeTensorsCorrupt, HeaderLengthBeyondTheFile) {
  TempDir dir;
  std::string msg = load_error(dir, le64(100) + "{}");
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "the header is 100 bytes but the file has only 2 bytes"));
  EXPECT_TRUE(has(msg, "truncated"));
}

TEST(SafeTensorsCorrupt, AbsurdHeaderLength) {
  TempDir dir;
  std::string msg = load_error(dir, le64(uint64_t(1) << 40) + "{}");
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "over the 100000000-byte limit"));
}

TEST(SafeTensorsCorrupt, HeaderNotJson) {
  TempDir dir;
  std::string msg = load_error(dir, raw_file("{\"a\": nope}"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "not valid JSON at header byte"));
  EXPECT_TRUE(has(load_error(dir, raw_file("")), "not valid JSON"));
  // Padding must be spaces: NUL bytes after the JSON are rejected, as the reference library does.
  EXPECT_TRUE(has(load_error(dir, raw_file(std::string("{}\0\0\0\0\0\0", 8))), "not valid JSON"));
}

TEST(SafeTensorsCorrupt, HeaderNotAnObject) {
  TempDir dir;
  EXPECT_TRUE(
      has(load_error(dir, raw_file("[1,2]   ")), "the header is a JSON array, not an object"));
}

// A shape nested 100,000 deep would be dump()ed (recursively) into the error message.
TEST(SafeTensorsCorrupt, NestingPastTheLimit) {
  TempDir dir;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  std::string msg = load_error(
      dir, raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":" + deep + ",\"data_offsets\":[0,4]}}"));
  EXPECT_TRUE(has(msg, "bad.safetensors: JSON nesting depth is over kiln's limit of 128"));
}

TEST(SafeTensorsCorrupt, MetadataMustMapStringsToStrings) {
  TempDir dir;
  std::string msg = load_error(dir, raw_file("{\"__metadata__\":{\"epochs\":3}}"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "\"__metadata__\" key 'epochs' holds a JSON number"));
  msg = load_error(dir, raw_file("{\"__metadata__\":[\"a\"]}"));
  EXPECT_TRUE(has(msg, "\"__metadata__\" is a JSON array"));
}

TEST(SafeTensorsCorrupt, EntryFieldsMissingOrMistyped) {
  TempDir dir;
  auto err = [&](const std::string& body) {
    return load_error(dir, raw_file(header({{"w", body}})));
  };
  EXPECT_TRUE(has(err("\"shape\":[1],\"data_offsets\":[0,4]"), "tensor 'w' has no \"dtype\""));
  EXPECT_TRUE(has(err("\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]"),
                  "\"dtype\" that is not a string"));
  EXPECT_TRUE(has(err("\"dtype\":\"F32\",\"data_offsets\":[0,4]"), "tensor 'w' has no \"shape\""));
  EXPECT_TRUE(has(err("\"dtype\":\"F32\",\"shape\":[1]"), "tensor 'w' has no \"data_offsets\""));
  EXPECT_TRUE(has(err("\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]"), "not an array"));
  EXPECT_TRUE(
      has(load_error(dir, raw_file("{\"w\":3}")), "tensor 'w' is a JSON number, not an object"));
  std::string msg = err("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]");
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "must be [begin, end]"));
  EXPECT_TRUE(
      has(err("\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]"), "must be [begin, end]"));
}

TEST(SafeTensorsCorrupt, UnknownAndUnsupportedDtypes) {
  TempDir dir;
  std::string msg = load_error(
      dir,
      raw_file(header({{"w", "\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]"}}), "abcd"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "tensor 'w' has unknown dtype 'F33'"));
  msg = load_error(
      dir, raw_file(header({{"w", "\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]"}}),
                    "abcdefgh"));
  EXPECT_TRUE(has(msg, "tensor 'w' has dtype F64, which kiln does not support"));
  // Our own block formats have no safetensors spelling and must not be accepted from a file.
  msg = load_error(
      dir, raw_file(header({{"w", "\"dtype\":\"Q8_0\",\"shape\":[32],\"data_offsets\":[0,34]"}}),
                    std::string(34, 'x')));
  EXPECT_TRUE(has(msg, "unknown dtype 'Q8_0'"));
}

TEST(SafeTensorsCorrupt, BadShapes) {
  TempDir dir;
  auto err = [&](const std::string& shape) {
    std::string body = "\"dtype\":\"U8\",\"data_offsets\":[0,1],\"shape\":";
    return load_error(dir, raw_file(header({{"w", body.append(shape)}}), "x"));
  };
  EXPECT_TRUE(
      has(err("[-1]"), "tensor 'w' has shape [-1], whose entries must be non-negative integers"));
  EXPECT_TRUE(has(err("[1.0]"), "non-negative integers"));
  EXPECT_TRUE(has(err("[\"1\"]"), "non-negative integers"));
  EXPECT_TRUE(has(err("[18446744073709551615]"), "non-negative integers"));
  EXPECT_TRUE(has(err("[4294967296,4294967296]"), "too large to address"));
}

TEST(SafeTensorsCorrupt, OffsetsBackwards) {
  TempDir dir;
  std::string msg = load_error(
      dir,
      raw_file(header({{"w", "\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]"}}), "abcd"));
  EXPECT_TRUE(has(msg, "tensor 'w' has data_offsets [4,0] whose begin is after its end"));
}

TEST(SafeTensorsCorrupt, ByteCountDisagreesWithShape) {
  TempDir dir;
  std::string msg = load_error(
      dir, raw_file(header({{"w", "\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]"}}),
                    std::string(20, 'x')));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg,
                  "tensor 'w' is F32 (2, 3), which is 24 bytes, but its data_offsets [0,20] "
                  "span 20 bytes"));
}

TEST(SafeTensorsCorrupt, TruncatedFile) {
  TempDir dir;
  std::string good = dir.file("good.safetensors");
  save_safetensors(good, {{"embed", byte_pattern({4, 4}, DType::f32)},
                          {"lm_head.weight", byte_pattern({4, 4}, DType::f32)}});
  std::string bytes = read_file(good);
  std::string path = dir.file("cut.safetensors");
  write_file_atomic(path, bytes.substr(0, bytes.size() - 10));
  std::string msg = error_of([&] { load_safetensors(path); });
  EXPECT_EQ(msg, "[safetensors] " + path + ": tensor 'lm_head.weight' ends at byte " +
                     std::to_string(bytes.size()) + " but the file has " +
                     std::to_string(bytes.size() - 10) +
                     " bytes: the file is truncated; re-export it");
}

TEST(SafeTensorsCorrupt, OverlappingTensors) {
  TempDir dir;
  std::string msg = load_error(
      dir, raw_file(header({{"a", "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]"},
                            {"b", "\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]"}}),
                    "abcdef"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "tensors 'a' (data bytes 0..4) and 'b' (data bytes 2..6) overlap"));
}

TEST(SafeTensorsCorrupt, HoleBetweenTensors) {
  TempDir dir;
  std::string msg = load_error(
      dir, raw_file(header({{"a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]"},
                            {"b", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]"}}),
                    "abcdef"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(has(msg, "data bytes 2..4 belong to no tensor (a hole before 'b')"));
  // A hole at the very start.
  msg = load_error(
      dir,
      raw_file(header({{"a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1,3]"}}), "abc"));
  EXPECT_TRUE(has(msg, "data bytes 0..1 belong to no tensor"));
}

TEST(SafeTensorsCorrupt, TrailingBytesAfterTheLastTensor) {
  TempDir dir;
  std::string msg = load_error(
      dir,
      raw_file(header({{"a", "\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]"}}), "abcde"));
  EXPECT_TRUE(has(msg, dir.file("bad.safetensors")));
  EXPECT_TRUE(
      has(msg, "the data section has 5 bytes but the tensors cover only 2: 3 trailing bytes"));
}

TEST(SafeTensorsCorrupt, DuplicateNameInHeader) {
  TempDir dir;
  std::string e = "\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]";
  std::string msg = load_error(dir, raw_file(header({{"a", e}, {"a", e}}), "x"));
  EXPECT_TRUE(has(msg, "the header names 'a' twice"));
}

TEST(SafeTensorsCorrupt, MissingFile) {
  TempDir dir;
  std::string msg = error_of([&] { load_safetensors(dir.file("absent.safetensors")); });
  EXPECT_TRUE(has(msg, dir.file("absent.safetensors")));
  EXPECT_TRUE(has(msg, "No such file"));
}

// --- saving: bad input is rejected and the old file survives -------------------------------------

TEST(SafeTensorsSave, RejectsBadInputAndKeepsTheOldFile) {
  TempDir dir;
  std::string path = dir.file("keep.safetensors");
  save_safetensors(path, {{"a", f32_tensor({1}, {1})}});
  const std::string before = read_file(path);
  Tensor t = f32_tensor({1}, {2});

  std::string msg = error_of([&] { save_safetensors(path, {{"x", t}, {"x", t}}); });
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "tensor 'x' is given twice"));
  EXPECT_TRUE(has(error_of([&] { save_safetensors(path, {{"__metadata__", t}}); }), "reserved"));
  EXPECT_TRUE(has(error_of([&] {
                    save_safetensors(path, {{"q", Tensor::zeros({32}, DType::q8_0)}});
                  }),
                  "dtype Q8_0, which safetensors cannot store"));
  EXPECT_TRUE(has(error_of([&] { save_safetensors(path, {{"u", Tensor()}}); }), "has no data"));
  EXPECT_TRUE(has(error_of([&] {
                    save_safetensors(path, {{std::string("\xff"), t}});
                  }),
                  "valid UTF-8"));

  EXPECT_EQ(read_file(path), before);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"keep.safetensors"});
}

TEST(SafeTensorsSave, MissingDirectoryNamesPath) {
  TempDir dir;
  std::string path = dir.file("no/dir/m.safetensors");
  std::string msg = error_of([&] { save_safetensors(path, {{"a", f32_tensor({1}, {1})}}); });
  EXPECT_TRUE(has(msg, path));
}

TEST(SafeTensorsSave, OverwritingAFileThatIsMappedIsSafe) {
  // Saving over a file we have loaded replaces it by rename, so the old mapping stays valid.
  TempDir dir;
  std::string path = dir.file("m.safetensors");
  save_safetensors(path, {{"a", f32_tensor({2}, {1, 2})}});
  SafeTensorsFile old = load_safetensors(path);
  save_safetensors(path, {{"a", f32_tensor({2}, {7, 8})}});
  EXPECT_EQ(old.get("a").f32()[1], 2.0f);
  EXPECT_EQ(load_safetensors(path).get("a").f32()[1], 8.0f);
}

}  // namespace
}  // namespace kiln

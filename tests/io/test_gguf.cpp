// GGUF reader/writer: every value type and tensor type round-trips, the layout follows
// docs/gguf.md (header, alignment, offsets), and damaged files fail with a message that names
// the problem: every truncation, a bad magic or version, an unsupported tensor type, a tensor
// past the end. A failed write leaves no file.
#include "kiln/io/gguf.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "io_test_util.h"
#include "kiln/io/file.h"

using namespace kiln;
using namespace kiln::gguf;
using kiln::testing::error_of;
using kiln::testing::has;

namespace {

std::vector<uint8_t> bytes_of(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

Writer sample() {
  Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.set("general.alignment", Value::u32(32));
  w.set("a.u32", Value::u32(7));
  w.set("a.i32", Value::i32(-5));
  w.set("a.u64", Value::u64(1ull << 40));
  w.set("a.f32", Value::f32(0.25f));
  w.set("a.bool", Value::boolean(true));
  w.set("a.strs", Value::str_array({"x", "", "héllo"}));
  w.set("a.ints", Value::int_array(ValueType::i32, {1, -2, 3}));
  w.set("a.floats", Value::f32_array({1.5, -2.0}));
  w.add_tensor("t.f32", {3, 2}, TensorType::f32, bytes_of({1, 2, 3, 4, 5, 6}));
  w.add_tensor("t.f16", {4}, TensorType::f16, std::vector<uint8_t>(8, 0x3c));
  w.add_tensor("t.q8", {64, 1}, TensorType::q8_0, std::vector<uint8_t>(68, 1));
  return w;
}

TEST(Gguf, RoundTrip) {
  kiln::testing::TempDir dir;
  const std::string path = dir.file("a.gguf");
  sample().write(path);
  File f = File::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("a.u32"), 7);
  EXPECT_EQ(f.get_int("a.i32"), -5);
  EXPECT_EQ(f.get_int("a.u64"), int64_t(1) << 40);
  EXPECT_EQ(f.get_float("a.f32"), 0.25);
  EXPECT_TRUE(f.get("a.bool").b);
  EXPECT_EQ(f.get("a.strs").strings, (std::vector<std::string>{"x", "", "héllo"}));
  EXPECT_EQ(f.get("a.ints").ints, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.get("a.floats").floats, (std::vector<double>{1.5, -2.0}));
  ASSERT_EQ(f.tensors().size(), 3u);
  const TensorInfo& t = f.tensor("t.f32");
  EXPECT_EQ(t.dims, (std::vector<int64_t>{3, 2}));
  float v[6];
  std::memcpy(v, t.data, 24);
  EXPECT_EQ(v[5], 6.0f);
  EXPECT_EQ(f.tensor("t.f16").offset, 32u);  // 24 bytes padded to the alignment
  EXPECT_EQ(f.tensor("t.q8").offset, 64u);
  EXPECT_EQ(f.tensor("t.q8").nbytes(), 68u);
  // Header: magic, version 3, counts.
  const std::string raw = read_file(path);
  EXPECT_EQ(raw.substr(0, 4), "GGUF");
  uint32_t ver;
  uint64_t nt, nkv;
  std::memcpy(&ver, raw.data() + 4, 4);
  std::memcpy(&nt, raw.data() + 8, 8);
  std::memcpy(&nkv, raw.data() + 16, 8);
  EXPECT_EQ(ver, 3u);
  EXPECT_EQ(nt, 3u);
  EXPECT_EQ(nkv, 10u);
  EXPECT_TRUE(has(error_of([&] { f.get_int("missing.key"); }), "missing.key"));
  EXPECT_TRUE(has(error_of([&] { f.get_int("general.architecture"); }), "expected an integer"));
  EXPECT_TRUE(has(error_of([&] { f.tensor("nope"); }), "no tensor 'nope'"));
}

TEST(Gguf, EveryTruncationFailsCleanly) {
  kiln::testing::TempDir dir;
  const std::string path = dir.file("a.gguf"), cut = dir.file("cut.gguf");
  sample().write(path);
  const std::string raw = read_file(path);
  // The data section is 160 bytes (tensors at 0, 32, 64, each padded to 32); the last tensor's
  // bytes end 28 bytes before the end of the file (its padding may be cut: nothing is lost).
  const size_t last_end = raw.size() - 160 + 64 + 68;
  for (size_t n = 0; n < last_end; ++n) {
    {
      std::FILE* fp = std::fopen(cut.c_str(), "wb");
      std::fwrite(raw.data(), 1, n, fp);
      std::fclose(fp);
    }
    const std::string msg = error_of([&] { File::open(cut); });
    ASSERT_TRUE(msg.find("truncated") != std::string::npos ||
                msg.find("not a GGUF file") != std::string::npos)
        << "length " << n << ": " << msg;
  }
}

TEST(Gguf, DamagedHeaders) {
  kiln::testing::TempDir dir;
  const std::string path = dir.file("a.gguf"), bad = dir.file("bad.gguf");
  sample().write(path);
  const std::string raw = read_file(path);
  auto patched = [&](size_t at, const void* p, size_t n) {
    std::string s = raw;
    std::memcpy(s.data() + at, p, n);
    write_file_atomic(bad, s);
    return error_of([&] { File::open(bad); });
  };
  EXPECT_TRUE(has(patched(0, "GGML", 4), "not a GGUF file"));
  const uint32_t v9 = 9;
  EXPECT_TRUE(has(patched(4, &v9, 4), "version 9"));
  const uint64_t huge = uint64_t(1) << 60;
  EXPECT_TRUE(has(patched(16, &huge, 8), "truncated"));  // metadata count
  // The type field of tensor "t.q8": find its name, skip n_dims (4) + 2 dims (16).
  const size_t at = raw.find("t.q8") + 4 + 4 + 16;
  const uint32_t iq2_xxs = 16;  // a type kiln does not read (q4_K, 12, it now reads)
  const std::string msg = patched(at, &iq2_xxs, 4);
  EXPECT_TRUE(has(msg, "tensor 't.q8'"));
  EXPECT_TRUE(has(msg, "ggml type 16"));
  EXPECT_TRUE(has(msg, "Q8_0"));
  // Offset of t.q8 moved past the end of the file.
  const uint64_t far = 1 << 20;
  EXPECT_TRUE(has(patched(at + 4, &far, 8), "truncated: tensor 't.q8'"));
  const uint64_t odd = 33;
  EXPECT_TRUE(has(patched(at + 4, &odd, 8), "alignment"));
}

TEST(Gguf, WriterRejectsBadTensorsAndLeavesNoFile) {
  kiln::testing::TempDir dir;
  Writer w = sample();
  EXPECT_TRUE(
      has(error_of([&] { w.add_tensor("x", {2}, TensorType::f32, std::vector<uint8_t>(7)); }),
          "7 bytes"));
  EXPECT_TRUE(
      has(error_of([&] { w.add_tensor("y", {33}, TensorType::q8_0, std::vector<uint8_t>(34)); }),
          "bad dimensions"));
  EXPECT_TRUE(
      has(error_of([&] { w.add_tensor("t.f32", {1}, TensorType::f32, std::vector<uint8_t>(4)); }),
          "added twice"));
  // A directory that does not exist: nothing is written, nothing left behind.
  EXPECT_FALSE(error_of([&] { w.write(dir.file("no/such/dir/a.gguf")); }).empty());
  EXPECT_TRUE(dir.list().empty());
}

}  // namespace

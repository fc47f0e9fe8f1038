// NF4 with double quantization (ops/nf4.h) against tests/ops/nf4_reference.py, the published
// algorithm in plain PyTorch: every code byte, scale code, nested absmax, the offset, the dynamic
// map and every dequantized value bit for bit.
#include "kiln/ops/nf4.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "test_util.h"

namespace kiln::test {
namespace {

template <class T>
std::vector<T> read_raw(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

bool same_bits(const float* a, const float* b, size_t n, size_t* where) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, 4) != 0) return *where = i, false;
  return true;
}

// Weights as a trained model has them (N(0, 0.02)), with the blocks that test the edges: all
// zeros, one nonzero, an outlier, values exactly on levels and halfway between two levels, and a
// last group of 256 blocks that is not full.
std::vector<float> weights(int64_t n) {
  Rng rng(7);
  std::vector<float> w(n);
  for (float& v : w) v = 0.02f * rng.normal();
  std::fill(w.begin(), w.begin() + 64, 0.0f);
  std::fill(w.begin() + 64, w.begin() + 128, 0.0f);
  w[64 + 17] = -0.5f;
  w[200] = 3.0f;
  for (int i = 0; i < 16; ++i) w[256 + i] = ops::kNf4Levels[i];
  for (int i = 0; i < 15; ++i) w[272 + i] = (ops::kNf4Levels[i] + ops::kNf4Levels[i + 1]) / 2;
  return w;
}

TEST(Nf4, MatchesThePublishedAlgorithmInPyTorchByteForByte) {
  const int64_t n = 64 * (256 * 3 + 37);
  const std::vector<float> w = weights(n);
  TempDir dir("nf4");
  {
    std::ofstream f(dir / "w.f32", std::ios::binary);
    f.write(reinterpret_cast<const char*>(w.data()), std::streamsize(n * 4));
  }
  const char* py = std::getenv("KILN_PYTHON");
  auto r = run_command(std::string(py ? py : "/usr/bin/python3") + " " + source_dir() +
                       "/tests/ops/nf4_reference.py " + (dir / "w.f32") + " " + (dir / "ref"));
  ASSERT_EQ(r.status, 0) << r.output;

  const ops::Nf4Tensor q = ops::nf4_quantize(w.data(), n);
  EXPECT_EQ(q.codes, read_raw<uint8_t>(dir / "ref.codes"));
  EXPECT_EQ(q.scale_codes, read_raw<uint8_t>(dir / "ref.scale_codes"));
  size_t at = 0;
  const auto nested = read_raw<float>(dir / "ref.nested_absmax");
  ASSERT_EQ(q.nested_absmax.size(), nested.size());
  EXPECT_TRUE(same_bits(q.nested_absmax.data(), nested.data(), nested.size(), &at)) << at;
  const auto offset = read_raw<float>(dir / "ref.offset");
  ASSERT_EQ(offset.size(), 1u);
  EXPECT_TRUE(same_bits(&q.offset, offset.data(), 1, &at));
  const auto map = read_raw<float>(dir / "ref.map");
  ASSERT_EQ(map.size(), 256u);
  EXPECT_TRUE(same_bits(ops::dynamic_map().data(), map.data(), 256, &at)) << "entry " << at;

  const auto ref = read_raw<float>(dir / "ref.dequant");
  ASSERT_EQ(int64_t(ref.size()), n);
  std::vector<float> out(n);
  ops::nf4_dequantize(q, 0, n, out.data());
  EXPECT_TRUE(same_bits(out.data(), ref.data(), n, &at))
      << "value " << at << ": " << out[at] << " vs " << ref[at];
  // bf16: the fp32 value rounded to nearest even; a range is the slice of the whole.
  std::vector<uint16_t> b(64 * 300);
  ops::nf4_dequantize_bf16(q, 64 * 500, int64_t(b.size()), b.data());
  for (size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], f32_to_bf16(ref[64 * 500 + i])) << i;
}

TEST(Nf4, StoresAbout4Point13BitsPerValue) {
  const int64_t n = 2048 * 2048;
  std::vector<float> w(n, 0.01f);
  const ops::Nf4Tensor q = ops::nf4_quantize(w.data(), n);
  const double bits = 8.0 * double(q.bytes()) / double(n);
  EXPECT_NEAR(bits, 4.0 + 8.0 / 64 + 32.0 / (64 * 256), 1e-4);
}

TEST(Nf4, RefusesPartialBlocksNamingTheSize) {
  std::vector<float> w(100, 1.0f);
  try {
    ops::nf4_quantize(w.data(), 100);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 64"), std::string::npos) << e.what();
  }
  const ops::Nf4Tensor q = ops::nf4_quantize(w.data(), 64);
  std::vector<float> out(64);
  EXPECT_THROW(ops::nf4_dequantize(q, 0, 128, out.data()), Error);
}

}  // namespace
}  // namespace kiln::test

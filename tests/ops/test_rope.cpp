// RoPE: inv_freq against hand-computed values of Hugging Face's formulas for every scaling kind,
// cpu vs ref, forward then backward restores the input, and both backwards against central
// finite differences of a double-precision rotation.
//
// Tolerances. An output element is a*c - b*s: two products and a sum, at most 3 roundings (2 if
// the compiler fuses one product into an FMA), so |error| <= 3 kU (|a| + |b|) <= 6 kU max|x|.
// cpu and ref may fuse differently, so they agree to twice that. A forward + backward round trip
// adds the error of the tables (cos^2 + sin^2 = 1 to ~2 kU): 16 kU max|x| in all.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kiln/ops/rope.h"
#include "op_test_util.h"

namespace kiln::test {
namespace {

using ops::RopeScaling;

std::vector<float> inv_freq(int D, float theta, RopeScaling s = {}, int seq_len = 0) {
  std::vector<float> f(D / 2);
  ops::rope_inv_freq(f.data(), D, theta, s, seq_len);
  return f;
}

// inv_freq is computed in fp32 by HF; agree to a few fp32 ulps.
constexpr double kFreqTol = 4 * kU;

TEST(Rope, InvFreqDefault) {
  // theta^(-2i/D) for D = 8, theta = 1e4: 1, 0.1, 0.01, 0.001.
  EXPECT_TRUE(all_close(inv_freq(8, 1e4f), std::vector<double>{1, 0.1, 0.01, 0.001}, kFreqTol, 0));
}

TEST(Rope, InvFreqLinearDividesByFactor) {
  RopeScaling s{RopeScaling::Kind::linear, 4.0f};
  EXPECT_TRUE(all_close(inv_freq(8, 1e4f, s), std::vector<double>{0.25, 0.025, 0.0025, 0.00025},
                        kFreqTol, 0));
}

TEST(Rope, InvFreqDynamicNtk) {
  RopeScaling s{RopeScaling::Kind::dynamic_ntk, 2.0f};
  s.original_max_position = 2048;
  // Within the original context nothing changes.
  EXPECT_TRUE(
      all_close(inv_freq(8, 1e4f, s, 2048), std::vector<double>{1, 0.1, 0.01, 0.001}, kFreqTol, 0));
  // seq_len 4096: base = 1e4 * (2 * 4096/2048 - 1)^(8/6) = 1e4 * 3^(4/3), so
  // inv_freq_i = base^(-i/4) = 10^-i * 3^(-i/3): 1, 0.1 / 3^(1/3), 0.01 / 3^(2/3), 0.001 / 3.
  const double c = std::cbrt(3.0);
  EXPECT_TRUE(all_close(inv_freq(8, 1e4f, s, 4096),
                        std::vector<double>{1, 0.1 / c, 0.01 / (c * c), 0.001 / 3}, kFreqTol, 0));
}

TEST(Rope, InvFreqLlama3) {
  // Llama 3.1: D = 128, theta = 5e5, factor 8, low 1, high 4, original context 8192, so
  // wavelengths below 2048 are kept, above 8192 divided by 8, and between them interpolated.
  RopeScaling s{RopeScaling::Kind::llama3, 8.0f, 1.0f, 4.0f, 8192};
  const auto f = inv_freq(128, 5e5f, s);
  const auto base = [](int i) { return std::pow(5e5, -i / 64.0); };
  // i = 10: wavelength 48.8, high frequency: unchanged.
  EXPECT_NEAR(f[10], base(10), kFreqTol * base(10));
  // i = 40: wavelength 22911 > 8192: divided by 8.
  EXPECT_NEAR(f[40], base(40) / 8, kFreqTol * base(40) / 8);
  // i = 30: wavelength 2948.3, in the band: smooth = (8192 / 2948.3 - 1) / (4 - 1) = 0.5928,
  // inv_freq = (1 - smooth) * base / 8 + smooth * base = 1.3718935677611381e-3.
  EXPECT_NEAR(f[30], 1.3718935677611381e-3, kFreqTol * 1.4e-3);
  const double wl = 2 * M_PI / base(30), smooth = (8192 / wl - 1) / 3;
  EXPECT_NEAR(f[30], (1 - smooth) * base(30) / 8 + smooth * base(30), kFreqTol * 1.4e-3);
}

TEST(Rope, TableIsCosSinOfPositionTimesFrequency) {
  const int T = 300, D = 16;
  const auto f = inv_freq(D, 1e4f);
  std::vector<float> c(T * D / 2), s(T * D / 2);
  ops::rope_table(c.data(), s.data(), f.data(), T, D);
  for (int t : {0, 1, 17, 299})
    for (int i = 0; i < D / 2; ++i) {
      EXPECT_NEAR(c[t * D / 2 + i], std::cos(double(t) * f[i]), 2 * kU * (1 + t * f[i]));
      EXPECT_NEAR(s[t * D / 2 + i], std::sin(double(t) * f[i]), 2 * kU * (1 + t * f[i]));
    }
}

struct Case {
  int N, heads, extra, D;  // rows of (heads + extra) * D floats; only `heads` are rotated
};

struct Tables {
  std::vector<float> cos, sin;
  std::vector<int> pos;
};

Tables tables(const Case& k, int T, uint64_t seed) {
  Tables t{std::vector<float>(T * k.D / 2), std::vector<float>(T * k.D / 2),
           random_ids(k.N, T, seed)};
  const auto f = inv_freq(k.D, 1e4f);
  ops::rope_table(t.cos.data(), t.sin.data(), f.data(), T, k.D);
  return t;
}

const std::vector<Case> kCases = {{1, 1, 0, 2},    {7, 3, 1, 8},     {13, 12, 4, 32},
                                  {100, 5, 2, 64}, {257, 2, 0, 128}, {33, 4, 3, 6}};

TEST(Rope, CpuMatchesRefAndLeavesOtherHeadsAlone) {
  for (const Case& k : kCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << k.N << " heads=" << k.heads << " D=" << k.D);
    const int stride = (k.heads + k.extra) * k.D;
    const Tables t = tables(k, 4096, 3);
    const auto x = random_vector(int64_t(k.N) * stride, 4);
    auto a = x, b = x;
    ops::ref::rope_forward(a.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                           t.sin.data());
    ops::cpu::rope_forward(b.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                           t.sin.data());
    EXPECT_TRUE(all_close(b, a, 0, 12 * kU * max_abs(x)));
    for (int n = 0; n < k.N; ++n)
      for (int i = k.heads * k.D; i < stride; ++i)
        ASSERT_EQ(b[n * stride + i], x[n * stride + i]) << "row " << n << " col " << i;
    auto ga = x, gb = x;
    ops::ref::rope_backward(ga.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                            t.sin.data());
    ops::cpu::rope_backward(gb.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                            t.sin.data());
    EXPECT_TRUE(all_close(gb, ga, 0, 12 * kU * max_abs(x)));
  }
}

TEST(Rope, BackwardUndoesForward) {
  for (const Case& k : kCases) {
    SCOPED_TRACE(::testing::Message() << "N=" << k.N << " heads=" << k.heads << " D=" << k.D);
    const int stride = (k.heads + k.extra) * k.D;
    const Tables t = tables(k, 4096, 5);
    const auto x = random_vector(int64_t(k.N) * stride, 6);
    auto y = x;
    ops::cpu::rope_forward(y.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                           t.sin.data());
    ops::cpu::rope_backward(y.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(),
                            t.sin.data());
    EXPECT_TRUE(all_close(y, x, 0, 16 * kU * max_abs(x)));
  }
}

// The forward in double, with the same (fp32) tables.
std::vector<double> rope_double(const std::vector<double>& x, const Case& k, const Tables& t) {
  const int stride = (k.heads + k.extra) * k.D, half = k.D / 2;
  auto y = x;
  for (int n = 0; n < k.N; ++n)
    for (int h = 0; h < k.heads; ++h)
      for (int i = 0; i < half; ++i) {
        const int64_t o = int64_t(n) * stride + h * k.D + i;
        const double c = t.cos[t.pos[n] * half + i], s = t.sin[t.pos[n] * half + i];
        y[o] = x[o] * c - x[o + half] * s;
        y[o + half] = x[o + half] * c + x[o] * s;
      }
  return y;
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  const Case k{5, 3, 1, 8};
  const int stride = (k.heads + k.extra) * k.D;
  const Tables t = tables(k, 64, 7);
  auto xd = to_double(random_vector(int64_t(k.N) * stride, 8));
  const auto g = random_vector(int64_t(k.N) * stride, 9);
  const auto fd = fd_gradient(xd, [&] { return dot(rope_double(xd, k, t), g); });
  for (auto bwd : {ops::ref::rope_backward, ops::cpu::rope_backward}) {
    auto dx = g;
    bwd(dx.data(), k.N, k.heads, k.D, stride, t.pos.data(), t.cos.data(), t.sin.data());
    // The rotation's own error (6 kU) plus FD's (~1e-9 relative).
    EXPECT_TRUE(all_close(dx, fd, 0, 8 * kU * max_abs(g) + 1e-9));
  }
}

}  // namespace
}  // namespace kiln::test

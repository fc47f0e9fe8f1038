// SwiGLU and tanh-GELU: cpu vs ref, backward vs double finite differences, overwrite contract.
//
// Tolerance, per element (kU = 2^-24). ref is computed in double and rounded once. cpu builds
// sigmoid(z) = 1 / (1 + exp(-z)) from a polynomial exp good to ~4 kU, so sigmoid errs
// relatively by <= (8 + |z| (1 - s)) kU, where |z| kU (1 - s) is the effect of the rounding in
// z itself (for GELU z = 2 sqrt(2/pi) (x + 0.044715 x^3) is computed in fp32); a few more
// roundings for the products. 1 - s loses relative precision near s = 1, so backward bounds
// are on the absolute value of each term, see the helpers below. The FD comparisons add
// 1e-8 |grad|max for the finite-difference error. Every bound also has an absolute floor
// kTiny: cpu's exp saturates (sigmoid(z) = 0 for z < -88.4, true value < 4e-39), which moves
// outputs and gradients by less than 4e-39 |x| |dz| |dout| < 1e-33 for these inputs.
#include "kiln/ops/activation.h"

#include <cmath>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::kU;
using test::random_normal;

constexpr double kK = 0.7978845608028654, kA = 0.044715;

constexpr double kTiny = 1e-33;

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

// Inputs: mostly N(0, 3), plus the tails where exp saturates.
std::vector<float> inputs(int64_t n, uint64_t seed) {
  auto x = random_normal(n, seed, 3.0f);
  const float tails[] = {0.0f, -0.0f, 20.0f, -20.0f, 60.0f, -60.0f, 100.0f, -100.0f, 1e-6f};
  for (int64_t i = 0; i < n && i < 9; ++i) x[i * 7 % n] = tails[i];
  return x;
}

// --- SwiGLU: out = silu(g) u ---

struct SwiGluBounds {
  std::vector<double> out, dgu;
};
SwiGluBounds swiglu_bounds(const std::vector<float>& gu, const std::vector<float>& dout, int N,
                           int F) {
  SwiGluBounds b{std::vector<double>(size_t(N) * F), std::vector<double>(size_t(N) * 2 * F)};
  for (int n = 0; n < N; ++n)
    for (int f = 0; f < F; ++f) {
      double g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f], d = dout[n * F + f];
      double s = sigmoid(g), rel = (12.0 + std::fabs(g)) * kU;
      b.out[n * F + f] = rel * std::fabs(g * s * u) + kTiny;
      // dgate = d u s (1 + g (1 - s)); (1 - s) has absolute error ~ rel * s.
      b.dgu[n * 2 * F + f] = rel * std::fabs(d * u) * s * (2.0 + 2.0 * std::fabs(g)) + kTiny;
      b.dgu[n * 2 * F + F + f] = rel * std::fabs(d * g * s) + kTiny;
    }
  return b;
}

const int kSwiGluShapes[][2] = {{1, 1}, {1, 7}, {7, 13}, {13, 31}, {31, 97}, {5, 100}, {2048, 704}};

TEST(SwiGlu, CpuMatchesRef) {
  uint64_t seed = 1;
  for (auto [N, F] : kSwiGluShapes) {
    auto gu = inputs(int64_t(N) * 2 * F, ++seed), dout = random_normal(int64_t(N) * F, ++seed);
    std::vector<float> o_ref(int64_t(N) * F), o_cpu(o_ref.size(), NAN);
    std::vector<float> d_ref(gu.size()), d_cpu(gu.size(), NAN);  // overwritten, so NaN first
    ref::swiglu_forward(o_ref.data(), gu.data(), N, F);
    cpu::swiglu_forward(o_cpu.data(), gu.data(), N, F);
    ref::swiglu_backward(d_ref.data(), dout.data(), gu.data(), N, F);
    cpu::swiglu_backward(d_cpu.data(), dout.data(), gu.data(), N, F);
    auto b = swiglu_bounds(gu, dout, N, F);
    EXPECT_TRUE(test::all_within(o_cpu, o_ref, b.out)) << "out N=" << N << " F=" << F;
    EXPECT_TRUE(test::all_within(d_cpu, d_ref, b.dgu)) << "dgu N=" << N << " F=" << F;
  }
}

template <typename Forward, typename Backward>
void check_swiglu_fd(Forward forward, Backward backward, int N, int F, uint64_t seed) {
  auto gu = random_normal(int64_t(N) * 2 * F, seed, 3.0f),
       g = random_normal(int64_t(N) * F, seed + 1);
  std::vector<float> out(int64_t(N) * F), dgu(gu.size(), NAN);
  forward(out.data(), gu.data(), N, F);
  backward(dgu.data(), g.data(), gu.data(), N, F);
  auto gud = test::to_double(gu);
  auto loss = [&] {
    double s = 0.0;
    for (int n = 0; n < N; ++n)
      for (int f = 0; f < F; ++f) {
        double a = gud[n * 2 * F + f], u = gud[n * 2 * F + F + f];
        s += a * sigmoid(a) * u * g[n * F + f];
      }
    return s;
  };
  auto fd = test::fd_gradient(gud, loss);
  auto b = swiglu_bounds(gu, g, N, F).dgu;
  for (auto& v : b) v += 1e-8 * test::max_abs(fd);
  EXPECT_TRUE(test::all_within(dgu, fd, b)) << "N=" << N << " F=" << F;
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 100;
  for (auto [N, F] : {std::pair{1, 1}, {1, 7}, {3, 13}, {7, 31}, {2, 97}}) {
    check_swiglu_fd(ref::swiglu_forward, ref::swiglu_backward, N, F, seed += 2);
    check_swiglu_fd(cpu::swiglu_forward, cpu::swiglu_backward, N, F, seed += 2);
  }
}

// --- GELU: out = 0.5 x (1 + tanh(k (x + a x^3))) = x sigmoid(2 k (x + a x^3)) ---

// The textbook form: exact math, but in double 1 + tanh cancels to 0 once y < -19.
double gelu_textbook(double x) {
  return 0.5 * x * (1.0 + std::tanh(kK * (x + kA * x * x * x)));
}
// The same function as x sigmoid(2y), accurate in the tails too: the FD oracle.
double gelu_double(double x) {
  return x * sigmoid(2.0 * kK * (x + kA * x * x * x));
}

// Per-element bounds for out and dx (see the file comment).
void gelu_bounds(const std::vector<float>& x, const std::vector<float>& dout,
                 std::vector<double>& out_b, std::vector<double>& dx_b) {
  out_b.resize(x.size());
  dx_b.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double v = x[i], z = 2.0 * kK * (v + kA * v * v * v), s = sigmoid(z);
    double dz = 2.0 * kK * (1.0 + 3.0 * kA * v * v);
    double rel = (16.0 + 4.0 * std::fabs(z) * (1.0 - s)) * kU;
    out_b[i] = rel * std::fabs(v * s) + kTiny;
    // dx = dout (s + v s (1 - s) dz): (1 - s) is only good to ~rel * s absolutely.
    dx_b[i] = std::fabs(dout[i]) * (rel * (s + std::fabs(v * s * (1 - s) * dz)) +
                                    4.0 * rel * s * std::fabs(v * dz)) +
              kTiny;
  }
}

const int64_t kGeluSizes[] = {1, 7, 13, 16, 31, 97, 1000, 2048 * 1024 + 3};

TEST(Gelu, CpuMatchesRef) {
  uint64_t seed = 200;
  for (int64_t n : kGeluSizes) {
    auto x = inputs(n, ++seed), dout = random_normal(n, ++seed);
    std::vector<float> o_ref(n), o_cpu(n, NAN), d_ref(n), d_cpu(n, NAN);
    ref::gelu_forward(o_ref.data(), x.data(), n);
    cpu::gelu_forward(o_cpu.data(), x.data(), n);
    ref::gelu_backward(d_ref.data(), dout.data(), x.data(), n);
    cpu::gelu_backward(d_cpu.data(), dout.data(), x.data(), n);
    std::vector<double> ob, db;
    gelu_bounds(x, dout, ob, db);
    EXPECT_TRUE(test::all_within(o_cpu, o_ref, ob)) << "out n=" << n;
    EXPECT_TRUE(test::all_within(d_cpu, d_ref, db)) << "dx n=" << n;
  }
}

// Both against the textbook formula (as in Hugging Face's gelu_new), not each other. Double
// tanh is good to 2^-53 absolutely, so the textbook value itself is off by up to 2^-53 |x|.
TEST(Gelu, ForwardMatchesTextbookFormula) {
  auto x = inputs(4096, 7);
  std::vector<double> want(x.size());
  for (size_t i = 0; i < x.size(); ++i) want[i] = gelu_textbook(x[i]);
  std::vector<float> o_ref(x.size()), o_cpu(x.size());
  ref::gelu_forward(o_ref.data(), x.data(), int64_t(x.size()));
  cpu::gelu_forward(o_cpu.data(), x.data(), int64_t(x.size()));
  std::vector<double> ob, db;
  gelu_bounds(x, x, ob, db);
  for (size_t i = 0; i < x.size(); ++i) ob[i] += 0x1p-52 * std::fabs(x[i]);
  EXPECT_TRUE(test::all_close(o_ref, want, kU, 0x1p-52 * test::max_abs(x)));  // one rounding
  EXPECT_TRUE(test::all_within(o_cpu, want, ob));
}

template <typename Backward>
void check_gelu_fd(Backward backward, int64_t n, uint64_t seed) {
  auto x = random_normal(n, seed, 3.0f), g = random_normal(n, seed + 1);
  std::vector<float> dx(n, NAN);
  backward(dx.data(), g.data(), x.data(), n);
  auto xd = test::to_double(x);
  auto loss = [&] {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += gelu_double(xd[i]) * g[i];
    return s;
  };
  auto fd = test::fd_gradient(xd, loss);
  std::vector<double> ob, b;
  gelu_bounds(x, g, ob, b);
  for (auto& v : b) v += 1e-8 * test::max_abs(fd);
  EXPECT_TRUE(test::all_within(dx, fd, b)) << "n=" << n;
}

TEST(Gelu, BackwardMatchesFiniteDifferences) {
  uint64_t seed = 300;
  for (int64_t n : {1, 7, 13, 97}) {
    check_gelu_fd(ref::gelu_backward, n, seed += 2);
    check_gelu_fd(cpu::gelu_backward, n, seed += 2);
  }
}

// Elementwise, so any thread split must give the same bits (vector body vs scalar tail).
TEST(Activation, CpuIndependentOfThreadCount) {
  const int N = 37, F = 704;
  auto gu = inputs(int64_t(N) * 2 * F, 1), dout = random_normal(int64_t(N) * F, 2);
  std::vector<std::vector<float>> res[4];
  for (int t : {1, 2, 3}) {
    test::ThreadCount tc(t);
    std::vector<float> o(int64_t(N) * F), d(gu.size()), go(gu.size()), gd(gu.size());
    cpu::swiglu_forward(o.data(), gu.data(), N, F);
    cpu::swiglu_backward(d.data(), dout.data(), gu.data(), N, F);
    cpu::gelu_forward(go.data(), gu.data(), int64_t(gu.size()));
    cpu::gelu_backward(gd.data(), gu.data(), gu.data(), int64_t(gu.size()));
    res[0].push_back(o), res[1].push_back(d), res[2].push_back(go), res[3].push_back(gd);
  }
  for (auto& r : res) {
    EXPECT_TRUE(test::bit_equal(r[0], r[1]));
    EXPECT_TRUE(test::bit_equal(r[0], r[2]));
  }
}

}  // namespace
}  // namespace kiln::ops

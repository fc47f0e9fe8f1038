// RMSNorm: cpu vs ref, backward vs double finite differences, accumulation, determinism.
//
// Tolerance, per element, from the arithmetic (kU = 2^-24):
//   forward: sum x^2 over C positive terms has relative error <= C kU; rsqrt and the two
//     products add a few kU: |out - ref| <= (C + 8) kU |out|, same for rstd.
//   dx_i = r (g_i - x_i r^2 sum(g x) / C): the C-term sum errs by <= C kU sum|g x|, and r by
//     the forward's (C + 8) kU, so |err| <= 2 (C + 8) kU (r |g_i| + |x_i| r^3 sum|g x| / C).
//   dw_c = sum_n dout x r: <= (N + 4) kU sum_n |dout x r|, plus the same r error.
// Accumulated outputs add one rounding of |prefill|. The FD comparison adds 1e-8 |grad|max
// for the finite-difference error (~1e-9 relative in double).
#include "kiln/ops/rms_norm.h"

#include <cmath>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::kU;
using test::random_normal;
using test::random_vector;

constexpr float kEps = 1e-5f;

struct Shape {
  int N, C;
};
const Shape kShapes[] = {{1, 1}, {1, 7}, {7, 13}, {13, 31}, {31, 97}, {5, 100}, {2048, 256}};

// Per-element error bounds of the backward for inputs and rstd (see the file comment).
struct Bounds {
  std::vector<double> dx, dw;
};
Bounds backward_bounds(const std::vector<float>& dout, const std::vector<float>& x,
                       const std::vector<float>& w, const std::vector<float>& rstd, int N, int C) {
  Bounds b{std::vector<double>(size_t(N) * C), std::vector<double>(C, 0.0)};
  const double kx = 2.0 * (C + 8) * kU, kw = (N + C + 12) * kU;
  for (int n = 0; n < N; ++n) {
    double r = rstd[n], sgx = 0.0;
    for (int c = 0; c < C; ++c) sgx += std::fabs(double(dout[n * C + c]) * w[c] * x[n * C + c]);
    for (int c = 0; c < C; ++c) {
      double g = std::fabs(double(dout[n * C + c]) * w[c]), xv = std::fabs(x[n * C + c]);
      b.dx[n * C + c] = kx * (r * g + xv * r * r * r * sgx / C);
      b.dw[c] += kw * std::fabs(double(dout[n * C + c]) * x[n * C + c] * r);
    }
  }
  return b;
}

TEST(RmsNorm, ForwardCpuMatchesRef) {
  uint64_t seed = 1;
  for (auto [N, C] : kShapes) {
    auto x = random_normal(int64_t(N) * C, ++seed), w = random_vector(C, ++seed, 0.5f, 1.5f);
    std::vector<float> out_ref(x.size()), out_cpu(x.size()), r_ref(N), r_cpu(N);
    ref::rms_norm_forward(out_ref.data(), r_ref.data(), x.data(), w.data(), N, C, kEps);
    cpu::rms_norm_forward(out_cpu.data(), r_cpu.data(), x.data(), w.data(), N, C, kEps);
    const double rtol = (C + 8) * kU;
    EXPECT_TRUE(test::all_close(out_cpu, out_ref, rtol, 1e-30)) << "N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_close(r_cpu, r_ref, rtol, 0.0)) << "N=" << N << " C=" << C;
  }
}

TEST(RmsNorm, BackwardCpuMatchesRefAndAccumulates) {
  uint64_t seed = 100;
  for (auto [N, C] : kShapes) {
    auto x = random_normal(int64_t(N) * C, ++seed), w = random_vector(C, ++seed, 0.5f, 1.5f);
    auto dout = random_normal(x.size(), ++seed);
    std::vector<float> out(x.size()), rstd(N);
    ref::rms_norm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
    // Outputs start non-zero: the contract is +=.
    auto dx0 = random_normal(x.size(), ++seed), dw0 = random_normal(C, ++seed);
    auto dx_ref = dx0, dx_cpu = dx0, dw_ref = dw0, dw_cpu = dw0;
    ref::rms_norm_backward(dx_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(),
                           rstd.data(), N, C);
    cpu::rms_norm_backward(dx_cpu.data(), dw_cpu.data(), dout.data(), x.data(), w.data(),
                           rstd.data(), N, C);
    Bounds b = backward_bounds(dout, x, w, rstd, N, C);
    for (size_t i = 0; i < b.dx.size(); ++i) b.dx[i] += 2 * kU * std::fabs(dx0[i]);
    for (int c = 0; c < C; ++c) b.dw[c] += 2 * kU * std::fabs(dw0[c]);
    EXPECT_TRUE(test::all_within(dx_cpu, dx_ref, b.dx)) << "dx N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_within(dw_cpu, dw_ref, b.dw)) << "dw N=" << N << " C=" << C;
  }
}

// out = w x / sqrt(mean(x^2) + eps), in double.
std::vector<double> rms_norm_double(const std::vector<double>& x, const std::vector<double>& w,
                                    int N, int C) {
  std::vector<double> out(x.size());
  for (int n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += x[n * C + c] * x[n * C + c];
    double r = 1.0 / std::sqrt(ss / C + double(kEps));
    for (int c = 0; c < C; ++c) out[n * C + c] = w[c] * x[n * C + c] * r;
  }
  return out;
}

template <typename Forward, typename Backward>
void check_fd(Forward forward, Backward backward, int N, int C, uint64_t seed) {
  auto x = random_normal(int64_t(N) * C, seed), w = random_vector(C, seed + 1, 0.5f, 1.5f);
  auto g = random_normal(x.size(), seed + 2);
  std::vector<float> out(x.size()), rstd(N), dx(x.size(), 0.0f), dw(C, 0.0f);
  forward(out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
  backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), N, C);

  auto xd = test::to_double(x), wd = test::to_double(w);
  auto loss = [&] { return test::dot(rms_norm_double(xd, wd, N, C), g); };
  auto dx_fd = test::fd_gradient(xd, loss), dw_fd = test::fd_gradient(wd, loss);
  Bounds b = backward_bounds(g, x, w, rstd, N, C);
  for (auto& v : b.dx) v += 1e-8 * test::max_abs(dx_fd);
  for (auto& v : b.dw) v += 1e-8 * test::max_abs(dw_fd);
  EXPECT_TRUE(test::all_within(dx, dx_fd, b.dx)) << "dx N=" << N << " C=" << C;
  EXPECT_TRUE(test::all_within(dw, dw_fd, b.dw)) << "dw N=" << N << " C=" << C;
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const Shape shapes[] = {{1, 1}, {1, 7}, {3, 13}, {7, 31}, {2, 97}, {40, 5}};
  uint64_t seed = 500;
  for (auto [N, C] : shapes) {
    check_fd(ref::rms_norm_forward, ref::rms_norm_backward, N, C, seed += 3);
    check_fd(cpu::rms_norm_forward, cpu::rms_norm_backward, N, C, seed += 3);
  }
}

// dw sums over rows; a resumed run must reproduce it bit for bit, whatever the thread count.
TEST(RmsNorm, CpuIndependentOfThreadCount) {
  const int N = 2048 + 13, C = 256;
  auto x = random_normal(int64_t(N) * C, 1), w = random_vector(C, 2, 0.5f, 1.5f);
  auto dout = random_normal(x.size(), 3);
  std::vector<std::vector<float>> outs, dxs, dws;
  for (int threads : {1, 2, 3}) {
    test::ThreadCount tc(threads);
    std::vector<float> out(x.size()), rstd(N), dx(x.size(), 0.0f), dw(C, 0.0f);
    cpu::rms_norm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, kEps);
    cpu::rms_norm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N,
                           C);
    outs.push_back(out), dxs.push_back(dx), dws.push_back(dw);
  }
  for (int i = 1; i < 3; ++i) {
    EXPECT_TRUE(test::bit_equal(outs[0], outs[i]));
    EXPECT_TRUE(test::bit_equal(dxs[0], dxs[i]));
    EXPECT_TRUE(test::bit_equal(dws[0], dws[i]));
  }
}

}  // namespace
}  // namespace kiln::ops

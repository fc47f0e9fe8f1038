// LayerNorm: cpu vs ref, backward vs double finite differences, accumulation, determinism.
//
// Tolerance, per element, from the arithmetic (kU = 2^-24). Let m1 = sum|x| / C and
// s = rstd * m1 (how large the mean is next to the spread; the inputs here have mean 0.5):
//   forward: the mean errs by <= C kU m1, the variance and rstd relatively by <= (C + 8) kU, so
//     |out - ref| <= (C + 8) kU ((1 + s) |w| (1 + |xhat|) + |b|).
//   dx_i = r (g_i - mean(g) - xhat_i mean(g xhat)), g = dout w: the C-term means err by
//     <= C kU of their absolute sums and xhat by the forward's error, so
//     |err| <= 2 (C + 8) kU (1 + s) r (|g_i| + mean|g| + |xhat_i| mean|g xhat|).
//   dw = sum_n dout xhat: <= (N + C + 12) kU (1 + s) sum_n |dout xhat|;  db: <= (N + 4) kU
//   sum|dout|.
// Accumulated outputs add one rounding of |prefill|; FD adds 1e-8 |grad|max.
#include "kiln/ops/layer_norm.h"

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
const Shape kShapes[] = {{1, 2}, {1, 7}, {7, 13}, {13, 31}, {31, 97}, {5, 100}, {2048, 256}};

std::vector<float> inputs(int64_t n, uint64_t seed) {
  auto x = random_normal(n, seed);
  for (auto& v : x) v += 0.5f;  // a non-zero mean exercises the two-pass variance
  return x;
}

struct Bounds {
  std::vector<double> dx, dw, db;
};
Bounds backward_bounds(const std::vector<float>& dout, const std::vector<float>& x,
                       const std::vector<float>& w, const std::vector<float>& mean,
                       const std::vector<float>& rstd, int N, int C) {
  Bounds b{std::vector<double>(size_t(N) * C), std::vector<double>(C, 0.0),
           std::vector<double>(C, 0.0)};
  for (int n = 0; n < N; ++n) {
    double r = rstd[n], mu = mean[n], m1 = 0.0, sg = 0.0, sgx = 0.0;
    for (int c = 0; c < C; ++c) {
      double g = std::fabs(double(dout[n * C + c]) * w[c]), xh = std::fabs((x[n * C + c] - mu) * r);
      m1 += std::fabs(x[n * C + c]) / C;
      sg += g / C;
      sgx += g * xh / C;
    }
    const double s1 = 1.0 + r * m1;
    for (int c = 0; c < C; ++c) {
      double g = std::fabs(double(dout[n * C + c]) * w[c]), xh = std::fabs((x[n * C + c] - mu) * r);
      b.dx[n * C + c] = 2.0 * (C + 8) * kU * s1 * r * (g + sg + xh * sgx);
      b.dw[c] += (N + C + 12) * kU * s1 * std::fabs(dout[n * C + c]) * xh;
      b.db[c] += (N + 4) * kU * std::fabs(dout[n * C + c]);
    }
  }
  return b;
}

TEST(LayerNorm, ForwardCpuMatchesRef) {
  uint64_t seed = 1;
  for (auto [N, C] : kShapes) {
    auto x = inputs(int64_t(N) * C, ++seed);
    auto w = random_vector(C, ++seed, 0.5f, 1.5f), b = random_vector(C, ++seed);
    std::vector<float> o_ref(x.size()), o_cpu(x.size()), m_ref(N), m_cpu(N), r_ref(N), r_cpu(N);
    ref::layer_norm_forward(o_ref.data(), m_ref.data(), r_ref.data(), x.data(), w.data(), b.data(),
                            N, C, kEps);
    cpu::layer_norm_forward(o_cpu.data(), m_cpu.data(), r_cpu.data(), x.data(), w.data(), b.data(),
                            N, C, kEps);
    std::vector<double> ob(x.size()), mb(N);
    for (int n = 0; n < N; ++n) {
      double m1 = 0.0;
      for (int c = 0; c < C; ++c) m1 += std::fabs(x[n * C + c]) / C;
      const double s1 = 1.0 + r_ref[n] * m1;
      mb[n] = (C + 2) * kU * m1;
      for (int c = 0; c < C; ++c) {
        double xh = std::fabs((x[n * C + c] - m_ref[n]) * r_ref[n]);
        ob[n * C + c] = (C + 8) * kU * (s1 * std::fabs(w[c]) * (1.0 + xh) + std::fabs(b[c]));
      }
    }
    EXPECT_TRUE(test::all_within(o_cpu, o_ref, ob)) << "out N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_within(m_cpu, m_ref, mb)) << "mean N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_close(r_cpu, r_ref, (C + 8) * kU, 0.0)) << "rstd N=" << N << " C=" << C;
  }
}

TEST(LayerNorm, BackwardCpuMatchesRefAndAccumulates) {
  uint64_t seed = 100;
  for (auto [N, C] : kShapes) {
    auto x = inputs(int64_t(N) * C, ++seed);
    auto w = random_vector(C, ++seed, 0.5f, 1.5f), b = random_vector(C, ++seed);
    auto dout = random_normal(x.size(), ++seed);
    std::vector<float> out(x.size()), mean(N), rstd(N);
    ref::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                            C, kEps);
    // Outputs start non-zero: the contract is +=.
    auto dx0 = random_normal(x.size(), ++seed), dw0 = random_normal(C, ++seed);
    auto db0 = random_normal(C, ++seed);
    auto dx_ref = dx0, dx_cpu = dx0, dw_ref = dw0, dw_cpu = dw0, db_ref = db0, db_cpu = db0;
    ref::layer_norm_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), x.data(),
                             w.data(), mean.data(), rstd.data(), N, C);
    cpu::layer_norm_backward(dx_cpu.data(), dw_cpu.data(), db_cpu.data(), dout.data(), x.data(),
                             w.data(), mean.data(), rstd.data(), N, C);
    Bounds bd = backward_bounds(dout, x, w, mean, rstd, N, C);
    for (size_t i = 0; i < bd.dx.size(); ++i) bd.dx[i] += 2 * kU * std::fabs(dx0[i]);
    for (int c = 0; c < C; ++c) {
      bd.dw[c] += 2 * kU * std::fabs(dw0[c]);
      bd.db[c] += 2 * kU * std::fabs(db0[c]);
    }
    EXPECT_TRUE(test::all_within(dx_cpu, dx_ref, bd.dx)) << "dx N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_within(dw_cpu, dw_ref, bd.dw)) << "dw N=" << N << " C=" << C;
    EXPECT_TRUE(test::all_within(db_cpu, db_ref, bd.db)) << "db N=" << N << " C=" << C;
  }
}

// out = (x - mean) / sqrt(var + eps) * w + b, biased variance, in double.
std::vector<double> layer_norm_double(const std::vector<double>& x, const std::vector<double>& w,
                                      const std::vector<double>& b, int N, int C) {
  std::vector<double> out(x.size());
  for (int n = 0; n < N; ++n) {
    double mu = 0.0, var = 0.0;
    for (int c = 0; c < C; ++c) mu += x[n * C + c] / C;
    for (int c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu) / C;
    for (int c = 0; c < C; ++c)
      out[n * C + c] = (x[n * C + c] - mu) / std::sqrt(var + double(kEps)) * w[c] + b[c];
  }
  return out;
}

template <typename Forward, typename Backward>
void check_fd(Forward forward, Backward backward, int N, int C, uint64_t seed) {
  auto x = inputs(int64_t(N) * C, seed);
  auto w = random_vector(C, seed + 1, 0.5f, 1.5f), b = random_vector(C, seed + 2);
  auto g = random_normal(x.size(), seed + 3);
  std::vector<float> out(x.size()), mean(N), rstd(N), dx(x.size(), 0.0f), dw(C, 0.0f), db(C, 0.0f);
  forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C, kEps);
  backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(),
           N, C);

  auto xd = test::to_double(x), wd = test::to_double(w), bd = test::to_double(b);
  auto loss = [&] { return test::dot(layer_norm_double(xd, wd, bd, N, C), g); };
  auto dx_fd = test::fd_gradient(xd, loss), dw_fd = test::fd_gradient(wd, loss);
  auto db_fd = test::fd_gradient(bd, loss);
  Bounds bounds = backward_bounds(g, x, w, mean, rstd, N, C);
  for (auto& v : bounds.dx) v += 1e-8 * test::max_abs(dx_fd);
  for (auto& v : bounds.dw) v += 1e-8 * test::max_abs(dw_fd);
  for (auto& v : bounds.db) v += 1e-8 * test::max_abs(db_fd);
  EXPECT_TRUE(test::all_within(dx, dx_fd, bounds.dx)) << "dx N=" << N << " C=" << C;
  EXPECT_TRUE(test::all_within(dw, dw_fd, bounds.dw)) << "dw N=" << N << " C=" << C;
  EXPECT_TRUE(test::all_within(db, db_fd, bounds.db)) << "db N=" << N << " C=" << C;
}

TEST(LayerNorm, BackwardMatchesFiniteDifferences) {
  const Shape shapes[] = {{1, 2}, {1, 7}, {3, 13}, {7, 31}, {2, 97}, {40, 5}};
  uint64_t seed = 500;
  for (auto [N, C] : shapes) {
    check_fd(ref::layer_norm_forward, ref::layer_norm_backward, N, C, seed += 4);
    check_fd(cpu::layer_norm_forward, cpu::layer_norm_backward, N, C, seed += 4);
  }
}

// dw and db sum over rows; a resumed run must reproduce them bit for bit.
TEST(LayerNorm, CpuIndependentOfThreadCount) {
  const int N = 2048 + 13, C = 256;
  auto x = inputs(int64_t(N) * C, 1);
  auto w = random_vector(C, 2, 0.5f, 1.5f), b = random_vector(C, 3);
  auto dout = random_normal(x.size(), 4);
  std::vector<std::vector<float>> res[4];
  for (int threads : {1, 2, 3}) {
    test::ThreadCount tc(threads);
    std::vector<float> out(x.size()), mean(N), rstd(N), dx(x.size(), 0.0f), dw(C, 0.0f),
        db(C, 0.0f);
    cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                            C, kEps);
    cpu::layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                             mean.data(), rstd.data(), N, C);
    res[0].push_back(out), res[1].push_back(dx), res[2].push_back(dw), res[3].push_back(db);
  }
  for (auto& r : res) {
    EXPECT_TRUE(test::bit_equal(r[0], r[1]));
    EXPECT_TRUE(test::bit_equal(r[0], r[2]));
  }
}

}  // namespace
}  // namespace kiln::ops

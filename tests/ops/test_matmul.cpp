// GEMM and linear layer: cpu (OpenBLAS) vs ref, backward vs double finite differences, and the
// accumulate/overwrite/null contract of linear_backward.
//
// Tolerance. A K-term fp32 dot product computed in any order has |err| <= K kU sum|a_i b_i|
// (plus one rounding of the result); ref accumulates in double, so it is exact to one rounding.
// Each check therefore allows atol = 2 (K + 2) kU * max(sum|a b|), where sum|a b| is computed
// by running ref on |A| and |B| (the 2 absorbs alpha/beta scaling and the ref's own rounding).
#include "kiln/ops/matmul.h"

#include <cmath>
#include <limits>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::all_close;
using test::kU;
using test::max_abs;
using test::random_vector;

std::vector<float> absv(std::vector<float> v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

void check_gemm(int M, int N, int K, bool ta, bool tb, float alpha, float beta, uint64_t seed) {
  auto a = random_vector(int64_t(M) * K, seed), b = random_vector(int64_t(K) * N, seed + 1);
  auto c0 = random_vector(int64_t(M) * N, seed + 2);
  std::vector<float> want = c0, got = c0;
  if (beta == 0.0f) got.assign(got.size(), std::numeric_limits<float>::quiet_NaN());  // not read
  ref::gemm(want.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, beta);
  cpu::gemm(got.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, beta);
  auto bound = absv(c0);
  ref::gemm(bound.data(), absv(a).data(), absv(b).data(), M, N, K, ta, tb, std::fabs(alpha),
            std::fabs(beta));
  EXPECT_TRUE(all_close(got, want, 0.0, 2.0 * (K + 2) * kU * max_abs(bound) + 1e-30))
      << "M=" << M << " N=" << N << " K=" << K << " ta=" << ta << " tb=" << tb;
}

TEST(Gemm, CpuMatchesRefOddShapes) {
  const int dims[] = {1, 7, 13, 31, 97};
  uint64_t seed = 1;
  for (int M : dims)
    for (int N : dims)
      for (int K : dims)
        for (int t = 0; t < 4; ++t) {
          check_gemm(M, N, K, t & 1, t & 2, 1.0f, 0.0f, seed += 3);
          check_gemm(M, N, K, t & 1, t & 2, 0.5f, -1.5f, seed += 3);
        }
}

TEST(Gemm, CpuMatchesRefLarge) {
  check_gemm(512, 704, 256, false, true, 1.0f, 0.0f, 100);
  check_gemm(256, 704, 512, true, false, 1.0f, 1.0f, 200);
}

// y = x W^T + b in double, W read in either layout: the finite-difference oracle.
std::vector<double> linear_double(const std::vector<double>& x, const std::vector<double>& w,
                                  const std::vector<double>* bias, int N, int IN, int OUT,
                                  WeightLayout layout) {
  std::vector<double> y(int64_t(N) * OUT);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OUT; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int i = 0; i < IN; ++i)
        s += x[n * IN + i] * (layout == WeightLayout::out_in ? w[o * IN + i] : w[i * OUT + o]);
      y[n * OUT + o] = s;
    }
  return y;
}

struct LinearShape {
  int N, IN, OUT;
};

TEST(Linear, ForwardCpuMatchesRef) {
  const LinearShape shapes[] = {{1, 1, 1},    {7, 13, 31}, {31, 97, 13},
                                {97, 17, 33}, {13, 1, 7},  {512, 256, 704}};
  uint64_t seed = 10;
  for (auto [N, IN, OUT] : shapes)
    for (auto layout : {WeightLayout::out_in, WeightLayout::in_out})
      for (bool with_bias : {false, true}) {
        auto x = random_vector(int64_t(N) * IN, ++seed),
             w = random_vector(int64_t(IN) * OUT, ++seed);
        auto bias = random_vector(OUT, ++seed);
        const float* bp = with_bias ? bias.data() : nullptr;
        std::vector<float> want(int64_t(N) * OUT), got(want.size(), NAN), bound(want.size());
        ref::linear_forward(want.data(), x.data(), w.data(), bp, N, IN, OUT, layout);
        cpu::linear_forward(got.data(), x.data(), w.data(), bp, N, IN, OUT, layout);
        auto bias_abs = absv(bias);
        ref::linear_forward(bound.data(), absv(x).data(), absv(w).data(),
                            with_bias ? bias_abs.data() : nullptr, N, IN, OUT, layout);
        EXPECT_TRUE(all_close(got, want, 0.0, 2.0 * (IN + 2) * kU * max_abs(bound)))
            << "N=" << N << " IN=" << IN << " OUT=" << OUT << " bias=" << with_bias;
      }
}

TEST(Linear, BackwardCpuMatchesRef) {
  const LinearShape shapes[] = {
      {1, 1, 1}, {7, 13, 31}, {31, 97, 13}, {97, 17, 33}, {512, 256, 704}};
  uint64_t seed = 50;
  for (auto [N, IN, OUT] : shapes)
    for (auto layout : {WeightLayout::out_in, WeightLayout::in_out}) {
      auto x = random_vector(int64_t(N) * IN, ++seed), w = random_vector(int64_t(IN) * OUT, ++seed);
      auto dy = random_vector(int64_t(N) * OUT, ++seed);
      // dw and dbias start non-zero: they are accumulated. dx starts as NaN: it is overwritten.
      auto dw0 = random_vector(int64_t(IN) * OUT, ++seed), db0 = random_vector(OUT, ++seed);
      std::vector<float> dx_want(int64_t(N) * IN), dx_got(dx_want.size(), NAN);
      auto dw_want = dw0, dw_got = dw0, db_want = db0, db_got = db0;
      ref::linear_backward(dx_want.data(), dw_want.data(), db_want.data(), dy.data(), x.data(),
                           w.data(), N, IN, OUT, layout);
      cpu::linear_backward(dx_got.data(), dw_got.data(), db_got.data(), dy.data(), x.data(),
                           w.data(), N, IN, OUT, layout);
      // Error bounds: the same products on absolute values (dw, db bounds include |dw0|, |db0|).
      std::vector<float> dx_b(dx_want.size()), dw_b = absv(dw0), db_b = absv(db0);
      ref::linear_backward(dx_b.data(), dw_b.data(), db_b.data(), absv(dy).data(), absv(x).data(),
                           absv(w).data(), N, IN, OUT, layout);
      EXPECT_TRUE(all_close(dx_got, dx_want, 0.0, 2.0 * (OUT + 2) * kU * max_abs(dx_b))) << "dx";
      EXPECT_TRUE(all_close(dw_got, dw_want, 0.0, 2.0 * (N + 2) * kU * max_abs(dw_b))) << "dw";
      EXPECT_TRUE(all_close(db_got, db_want, 0.0, 2.0 * (N + 2) * kU * max_abs(db_b))) << "db";
    }
}

using LinearBackwardFn = void (*)(float*, float*, float*, const float*, const float*, const float*,
                                  int, int, int, WeightLayout);

// Every gradient of L = sum(y * g) against central differences of linear_double.
void check_linear_fd(LinearBackwardFn backward, int N, int IN, int OUT, WeightLayout layout,
                     uint64_t seed) {
  auto x = random_vector(int64_t(N) * IN, seed), w = random_vector(int64_t(IN) * OUT, seed + 1);
  auto bias = random_vector(OUT, seed + 2), g = random_vector(int64_t(N) * OUT, seed + 3);
  std::vector<float> dx(int64_t(N) * IN), dw(w.size(), 0.0f), db(OUT, 0.0f);
  backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(), N, IN, OUT, layout);

  auto xd = test::to_double(x), wd = test::to_double(w), bd = test::to_double(bias);
  auto loss = [&] { return test::dot(linear_double(xd, wd, &bd, N, IN, OUT, layout), g); };
  auto dx_fd = test::fd_gradient(xd, loss), dw_fd = test::fd_gradient(wd, loss);
  auto db_fd = test::fd_gradient(bd, loss);
  // Float backward error: sums of OUT (dx) or N (dw, db) products of values in [-1, 1], so at
  // most K kU * K; FD error ~1e-9. Allow 2 K^2 kU + 1e-8.
  auto tol = [](int K) { return 2.0 * K * K * kU + 1e-8; };
  EXPECT_TRUE(all_close(dx, dx_fd, 0.0, tol(OUT)))
      << "dx N=" << N << " IN=" << IN << " OUT=" << OUT;
  EXPECT_TRUE(all_close(dw, dw_fd, 0.0, tol(N))) << "dw N=" << N << " IN=" << IN << " OUT=" << OUT;
  EXPECT_TRUE(all_close(db, db_fd, 0.0, tol(N))) << "db N=" << N << " IN=" << IN << " OUT=" << OUT;
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  const LinearShape shapes[] = {{1, 1, 1}, {3, 7, 5}, {7, 13, 3}, {5, 17, 31}};
  uint64_t seed = 300;
  for (auto [N, IN, OUT] : shapes)
    for (auto layout : {WeightLayout::out_in, WeightLayout::in_out}) {
      check_linear_fd(ref::linear_backward, N, IN, OUT, layout, seed += 5);
      check_linear_fd(cpu::linear_backward, N, IN, OUT, layout, seed += 5);
    }
}

TEST(Linear, BackwardSkipsNullOutputs) {
  const int N = 13, IN = 7, OUT = 31;
  auto x = random_vector(N * IN, 1), w = random_vector(IN * OUT, 2), dy = random_vector(N * OUT, 3);
  for (auto layout : {WeightLayout::out_in, WeightLayout::in_out}) {
    std::vector<float> dx_all(N * IN), dw_all(IN * OUT, 0.0f), db_all(OUT, 0.0f);
    cpu::linear_backward(dx_all.data(), dw_all.data(), db_all.data(), dy.data(), x.data(), w.data(),
                         N, IN, OUT, layout);
    std::vector<float> dx(N * IN), dw(IN * OUT, 0.0f), db(OUT, 0.0f);
    cpu::linear_backward(dx.data(), nullptr, nullptr, dy.data(), x.data(), w.data(), N, IN, OUT,
                         layout);  // frozen weight (e.g. a LoRA base layer): dx only
    cpu::linear_backward(nullptr, dw.data(), db.data(), dy.data(), x.data(), w.data(), N, IN, OUT,
                         layout);  // first layer: no dx
    EXPECT_TRUE(test::bit_equal(dx, dx_all));
    EXPECT_TRUE(test::bit_equal(dw, dw_all));
    EXPECT_TRUE(test::bit_equal(db, db_all));
  }
}

TEST(Linear, BiasGradientIndependentOfThreadCount) {
  const int N = 2048, IN = 8, OUT = 704;
  auto x = random_vector(N * IN, 1), w = random_vector(IN * OUT, 2), dy = random_vector(N * OUT, 3);
  std::vector<std::vector<float>> results;
  for (int threads : {1, 2, 3}) {
    test::ThreadCount tc(threads);
    std::vector<float> db(OUT, 0.0f);
    cpu::linear_backward(nullptr, nullptr, db.data(), dy.data(), x.data(), w.data(), N, IN, OUT,
                         WeightLayout::out_in);
    results.push_back(db);
  }
  EXPECT_TRUE(test::bit_equal(results[0], results[1]));
  EXPECT_TRUE(test::bit_equal(results[0], results[2]));
}

}  // namespace
}  // namespace kiln::ops

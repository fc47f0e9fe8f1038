// Shared helpers for op tests (tests/ops/test_*.cpp). Every op is tested the same three ways:
//   1. cpu vs ref forward and backward over odd shapes (1, primes, non-multiples of 16, one
//      large shape), with a tolerance derived from the arithmetic and stated beside it;
//   2. every backward (ref and cpu) against central finite differences of a small
//      double-precision forward written in the test, with L = sum(out * g) for a random g:
//          auto L = [&] { return dot(forward_double(xd, ...), g); };
//          std::vector<double> dx_fd = fd_gradient(xd, L);  // perturbs xd in place
//          EXPECT_TRUE(all_close(dx, dx_fd, /*rtol=*/0, /*atol=*/tol * max_abs(dx_fd)));
//   3. contract details: accumulate (+=) vs overwrite, null outputs skipped, determinism
//      across thread counts (ThreadCount guard + bit_equal).
//
// Tolerances. kU = 2^-24 is fp32 unit roundoff. A K-term fp32 sum of products has error at
// most about K * kU * sum|a_i b_i| (worst case; blocked or pairwise sums do far better), so a
// reduction of length K compared normwise (max|a - e| <= tol * max|e|) uses tol = c * K * kU
// with a small safety factor c. Central differences in double with h = 1e-5 are accurate to
// about h^2 |f'''| + 2^-53 |L| / h, i.e. 1e-9 relative, so the float backward's own error
// dominates the FD comparison. all_close reports the worst element, so a failure says where.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <vector>

#include "kiln/core/parallel.h"
#include "kiln/core/rng.h"

namespace kiln::test {

// fp32 unit roundoff: |fl(x) - x| <= kU |x|.
inline constexpr double kU = 0x1p-24;

// n values uniform in [lo, hi), from a fixed seed.
inline std::vector<float> random_vector(int64_t n, uint64_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = lo + (hi - lo) * rng.uniform();
  return v;
}

// n standard-normal values, from a fixed seed.
inline std::vector<float> random_normal(int64_t n, uint64_t seed, float stddev = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = stddev * rng.normal();
  return v;
}

// n ids uniform in [0, V).
inline std::vector<int> random_ids(int64_t n, int V, uint64_t seed) {
  Rng rng(seed);
  std::vector<int> v(n);
  for (auto& x : v) x = int(rng.below(uint64_t(V)));
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

template <typename T>
double max_abs(const std::vector<T>& v) {
  double m = 0.0;
  for (auto x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

// sum_i a_i b_i in double: the scalar loss L = sum(out * g) for finite differences.
template <typename A, typename B>
double dot(const std::vector<A>& a, const std::vector<B>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// max_i |a_i - e_i| / max(|e_i|, floor): the relative error, with `floor` keeping elements near
// zero from dominating (pass the scale of the data, e.g. max_abs(expected) * 1e-3).
template <typename E>
double max_rel_error(const float* actual, const E* expected, int64_t n, double floor) {
  double worst = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    double e = double(expected[i]);
    worst = std::max(worst, std::fabs(double(actual[i]) - e) / std::max(std::fabs(e), floor));
  }
  return worst;
}

namespace detail {
// Shared by all_close and all_within: allowed(i, e_i) is the largest |a_i - e_i| accepted.
template <typename E, typename Allowed>
::testing::AssertionResult compare(const float* actual, const E* expected, int64_t n,
                                   Allowed&& allowed) {
  int64_t bad = 0, worst = -1;
  double worst_excess = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    double e = double(expected[i]), err = std::fabs(double(actual[i]) - e);
    double ok = allowed(i, e);
    if (!(err <= ok)) {  // NaN never passes
      ++bad;
      double excess = std::isnan(err) ? INFINITY : err / std::max(ok, 1e-300);
      if (excess > worst_excess) worst_excess = excess, worst = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os.precision(9);
  double e = double(expected[worst]);
  os << bad << " of " << n << " elements differ; worst [" << worst << "]: actual " << actual[worst]
     << " expected " << e << " (|diff| " << std::fabs(double(actual[worst]) - e) << ", allowed "
     << allowed(worst, e) << ")";
  return ::testing::AssertionFailure() << os.str();
}
}  // namespace detail

// Passes when |a_i - e_i| <= atol + rtol |e_i| for every i (NaN never passes); on failure says
// how many elements failed and shows the worst one.
template <typename E>
::testing::AssertionResult all_close(const float* actual, const E* expected, int64_t n, double rtol,
                                     double atol) {
  return detail::compare(actual, expected, n,
                         [&](int64_t, double e) { return atol + rtol * std::fabs(e); });
}
template <typename E>
::testing::AssertionResult all_close(const std::vector<float>& actual,
                                     const std::vector<E>& expected, double rtol, double atol) {
  if (actual.size() != expected.size())
    return ::testing::AssertionFailure()
           << "sizes differ: " << actual.size() << " vs " << expected.size();
  return all_close(actual.data(), expected.data(), int64_t(actual.size()), rtol, atol);
}

// Passes when |a_i - e_i| <= bound_i for every i: for per-element error bounds derived from
// the arithmetic (e.g. bound_i = (K + 2) kU sum_k |a_ik b_kj| for a K-term dot product).
template <typename E>
::testing::AssertionResult all_within(const std::vector<float>& actual,
                                      const std::vector<E>& expected,
                                      const std::vector<double>& bound) {
  if (actual.size() != expected.size() || actual.size() != bound.size())
    return ::testing::AssertionFailure()
           << "sizes differ: " << actual.size() << ", " << expected.size() << ", " << bound.size();
  return detail::compare(actual.data(), expected.data(), int64_t(actual.size()),
                         [&](int64_t i, double) { return bound[i]; });
}

// Normwise comparison: max|a - e| <= tol * max|e|. The right test for gradients and other
// outputs with cancellation, where single elements near zero carry no relative precision.
template <typename E>
::testing::AssertionResult normwise_close(const std::vector<float>& actual,
                                          const std::vector<E>& expected, double tol) {
  return all_close(actual, expected, 0.0, tol * std::max(max_abs(expected), 1e-30));
}

// Bit-for-bit equality (determinism checks).
inline bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Central finite differences of a double-precision scalar function: returns dL/dx_i for each
// element of x, where loss() reads x (captured by reference). x is perturbed in place and
// restored exactly. Cost: 2 * x.size() calls of loss.
template <typename Loss>
std::vector<double> fd_gradient(std::vector<double>& x, Loss&& loss, double h = 1e-5) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    grad[i] = (plus - minus) / (2.0 * h);
  }
  return grad;
}

// Sets kiln's thread count for a scope and restores it after.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(num_threads()) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

}  // namespace kiln::test

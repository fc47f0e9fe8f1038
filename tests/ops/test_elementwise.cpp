// Vector helpers: cpu vs ref and determinism of sum_squares across thread counts.
#include "kiln/ops/elementwise.h"

#include <cmath>
#include <vector>

#include "op_test_util.h"

namespace kiln::ops {
namespace {

using test::random_vector;

// Sizes around the vector width, primes, and several parallel chunks plus a tail.
const int64_t kSizes[] = {0, 1, 7, 13, 16, 31, 97, 1000, (1 << 15) * 3 + 5, 1000003};

TEST(Elementwise, AddAndScaleMatchRefExactly) {
  uint64_t seed = 1;
  for (int64_t n : kSizes) {
    auto a = random_vector(n, ++seed), b = random_vector(n, ++seed);
    std::vector<float> want(n), got(n, NAN);
    ref::add(want.data(), a.data(), b.data(), n);
    cpu::add(got.data(), a.data(), b.data(), n);
    // One fp32 operation per element: the result is determined exactly.
    EXPECT_TRUE(test::bit_equal(got, want)) << "add n=" << n;
    ref::scale(want.data(), 0.37f, n);
    cpu::scale(got.data(), 0.37f, n);
    EXPECT_TRUE(test::bit_equal(got, want)) << "scale n=" << n;
  }
}

TEST(Elementwise, AddInPlace) {  // out may alias an input (residual adds: x = x + f(x))
  auto a = random_vector(1000, 1), b = random_vector(1000, 2);
  std::vector<float> want(1000);
  ref::add(want.data(), a.data(), b.data(), 1000);
  cpu::add(a.data(), a.data(), b.data(), 1000);
  EXPECT_TRUE(test::bit_equal(a, want));
}

TEST(Elementwise, SumSquaresMatchesRef) {
  uint64_t seed = 100;
  for (int64_t n : kSizes) {
    auto x = random_vector(n, ++seed, -3.0f, 3.0f);
    double want = ref::sum_squares(x.data(), n), got = cpu::sum_squares(x.data(), n);
    // Squares of floats are exact in double; n positive terms summed in any order in double
    // err by at most n 2^-53 of the total each.
    EXPECT_NEAR(got, want, 2.0 * (n + 2) * 0x1p-53 * want) << "n=" << n;
  }
}

TEST(Elementwise, SumSquaresIndependentOfThreadCount) {
  const int64_t n = (1 << 15) * 7 + 123;
  auto x = random_vector(n, 7);
  double results[3];
  for (int t : {1, 2, 3}) {
    test::ThreadCount tc(t);
    results[t - 1] = cpu::sum_squares(x.data(), n);
  }
  EXPECT_EQ(results[0], results[1]);  // exact: gradient clipping must resume bit for bit
  EXPECT_EQ(results[0], results[2]);
}

}  // namespace
}  // namespace kiln::ops

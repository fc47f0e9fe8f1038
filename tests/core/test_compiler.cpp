// The compiler's output on patterns it has got wrong on this project's machines. GCC 12.2 with
// -march=native on AVX-512 CPUs stored the constant {0.5, 0.5, 0.0, 0.0} as four 0.5s through its
// basic-block vectorizer; CMakeLists.txt turns that vectorizer off for GCC < 13. This test fails
// if a build loses the flag (or a compiler brings the bug back in another form).
#include <gtest/gtest.h>

#include <vector>

namespace kiln {
namespace {

TEST(Compiler, ConstantVectorsHalfRepeatedHalfZero) {
  const std::vector<double> d = {0.5, 0.5, 0.0, 0.0};
  EXPECT_EQ(d[2], 0.0);
  EXPECT_EQ(d[3], 0.0);
  const std::vector<float> f = {2.f, 2.f, 2.f, 2.f, 0.f, 0.f, 0.f, 0.f};
  for (int i = 4; i < 8; ++i) EXPECT_EQ(f[i], 0.0f) << i;
  const std::vector<double> e = {1.0, 2.0, 0.0, 0.0};
  EXPECT_EQ(e[1], 2.0);
  EXPECT_EQ(e[3], 0.0);
}

}  // namespace
}  // namespace kiln

// argmax_rows against std::max_element, fp32 and bf16, with ties and NaN.
#include <gtest/gtest.h>

#include <algorithm>

#include "cuda_test_util.h"
#include "kiln/cuda/sampling.h"

namespace kiln::cuda {
namespace {

using test::poisoned;
using test::to_cpu;
using test::to_gpu;

std::vector<int> host_argmax(const std::vector<float>& x, int N, int V) {
  std::vector<int> r(N);
  for (int n = 0; n < N; ++n) {
    auto row = x.begin() + int64_t(n) * V;
    r[n] = int(std::max_element(row, row + V) - row);
  }
  return r;
}

TEST(ArgmaxRows, MatchesMaxElementFp32) {
  KILN_REQUIRE_GPU();
  const int N = 7, V = 50257;
  auto x = test::randn(size_t(N) * V, 3);
  x[size_t(2) * V + 5] = 100, x[size_t(2) * V + 900] = 100;  // a tie: the lower index wins
  auto d = to_gpu(x);
  auto out = poisoned<int>(N);
  argmax_rows<float>(out.data(), d.data(), N, V, streams().compute);
  EXPECT_EQ(to_cpu(out), host_argmax(x, N, V));
}

TEST(ArgmaxRows, MatchesMaxElementBf16AndSkipsNaN) {
  KILN_REQUIRE_GPU();
  const int N = 3, V = 1000;
  auto x = test::randn(size_t(N) * V, 4);
  auto xb = test::floats_to_bf16(x);
  xb[0] = 0x7FC0;  // NaN in row 0 never wins
  auto d = to_gpu(xb);
  auto out = poisoned<int>(N);
  argmax_rows<bf16>(out.data(), reinterpret_cast<const bf16*>(d.data()), N, V, streams().compute);
  auto xf = test::bf16_to_floats(xb);
  xf[0] = -1e30f;
  EXPECT_EQ(to_cpu(out), host_argmax(xf, N, V));
}

}  // namespace
}  // namespace kiln::cuda

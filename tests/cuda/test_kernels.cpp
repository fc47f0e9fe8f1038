// The GPU's memory-bound ops (k_embedding.cu, k_rope.cu, k_activation.cu, k_elementwise.cu)
// against the CPU contract: ops::ref (double math, rounded once) or ops::cpu where it is the
// stated source of truth (embedding backward's order of summation). For bf16 the inputs are
// rounded to bf16 on the host first, so both sides see the same values. Sizes are odd and some
// pointers are offset by one element to run the element-by-element paths as well as the 16-byte
// vector ones. Overwritten outputs start as NaN, accumulated ones as random data.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "kernel_test_util.h"
#include "kiln/core/error.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/elementwise.h"
#include "kiln/ops/embedding.h"
#include "kiln/ops/rope.h"

namespace kiln::test {
namespace {

template <typename T>
class Kernels : public ::testing::Test {};
TYPED_TEST_SUITE(Kernels, Dtypes);

// A view of d shifted by `offset` elements (the element paths when offset breaks alignment).
template <typename T>
T* at(cuda::DeviceBuffer<T>& d, int64_t offset) {
  return d.data() + offset;
}
template <typename T>
std::vector<float> tail_of(const std::vector<float>& v, int64_t offset) {
  return std::vector<float>(v.begin() + offset, v.end());
}

// ---- embedding ----

std::vector<int> random_ids(int N, int V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int> ids(N);
  for (int n = 0; n < N; ++n) ids[n] = int(g() % V);
  for (int n = 0; n < N; n += 3) ids[n] = 7;  // one frequent id: a long run in backward
  return ids;
}

TYPED_TEST(Kernels, EmbeddingForward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int N = 37, V = 50;
  for (int C : {100, 1000, 4099, 3}) {
    SCOPED_TRACE(testing::Message() << "C " << C);
    const auto ids = random_ids(N, V, 1);
    const auto table = randn(size_t(V) * C, 2);
    const auto prior = round_to<T>(randn(size_t(N) * C, 3));
    auto d_ids = to_gpu(ids);
    auto d_table = to_gpu(table);
    for (bool accumulate : {false, true}) {
      std::vector<float> want = prior;
      ops::ref::embedding_forward(want.data(), ids.data(), table.data(), N, C, accumulate);
      auto d_out = accumulate ? gpu_from<T>(prior) : poisoned<T>(int64_t(N) * C);
      cuda::embedding_forward<T>(d_out.data(), d_ids.data(), d_table.data(), N, C, accumulate,
                                 compute());
      expect_close(floats_of(d_out), want, tol_out<T>(2), accumulate ? "out +=" : "out =");
    }
  }
}

// The sum for each table row is taken in order of n, as ops::cpu::embedding_backward does, so
// the result is the same bits (dout's values are exact in fp32 for bf16 too).
TYPED_TEST(Kernels, EmbeddingBackwardIsCpuBits) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int V = 50;
  for (int N : {37, 1, 2000})
    for (int C : {100, 1000, 4099, 3}) {
      SCOPED_TRACE(testing::Message() << "N " << N << " C " << C);
      const auto ids = random_ids(N, V, 4);
      const auto dout = round_to<T>(randn(size_t(N) * C, 5));
      const auto dtable0 = randn(size_t(V) * C, 6);
      std::vector<float> want = dtable0;
      ops::cpu::embedding_backward(want.data(), dout.data(), ids.data(), N, C);
      auto d_ids = to_gpu(ids);
      auto d_dout = gpu_from<T>(dout);
      auto d_dtable = to_gpu(dtable0);
      cuda::embedding_backward<T>(d_dtable.data(), d_dout.data(), d_ids.data(), N, C, compute());
      const auto got = to_cpu(d_dtable);
      EXPECT_EQ(bits_of(got), bits_of(want));
      expect_close(got, want, tol_f32(N), "dtable");  // says where, when the bits differ
    }
}

// ---- rope ----

TYPED_TEST(Kernels, RopeForwardBackward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int N = 37, heads = 3, max_pos = 50;
  for (int D : {6, 64, 128}) {
    SCOPED_TRACE(testing::Message() << "D " << D);
    const int stride = heads * D + 5;  // columns past the heads are left alone
    std::vector<float> inv(D / 2), cos(size_t(max_pos) * D / 2), sin(cos.size());
    ops::rope_inv_freq(inv.data(), D, 10000.0f, ops::RopeScaling{}, max_pos);
    ops::rope_table(cos.data(), sin.data(), inv.data(), max_pos, D);
    std::vector<int> pos(N);
    for (int n = 0; n < N; ++n) pos[n] = (n * 17 + 3) % max_pos;
    const auto x = round_to<T>(randn(size_t(N) * stride, 7));
    auto d_pos = to_gpu(pos);
    auto d_cos = to_gpu(cos), d_sin = to_gpu(sin);
    for (bool backward : {false, true}) {
      std::vector<float> want = x;
      auto d_x = gpu_from<T>(x);
      if (backward) {
        ops::ref::rope_backward(want.data(), N, heads, D, stride, pos.data(), cos.data(),
                                sin.data());
        cuda::rope_backward<T>(d_x.data(), N, heads, D, stride, d_pos.data(), d_cos.data(),
                               d_sin.data(), compute());
      } else {
        ops::ref::rope_forward(want.data(), N, heads, D, stride, pos.data(), cos.data(),
                               sin.data());
        cuda::rope_forward<T>(d_x.data(), N, heads, D, stride, d_pos.data(), d_cos.data(),
                              d_sin.data(), compute());
      }
      const auto got = floats_of(d_x);
      expect_close(got, want, tol_out<T>(2), backward ? "rope backward" : "rope forward");
      for (int n = 0; n < N; ++n)
        for (int c = heads * D; c < stride; ++c)
          ASSERT_EQ(got[size_t(n) * stride + c], x[size_t(n) * stride + c])
              << "column " << c << " past the heads was changed";
    }
  }
}

// ---- activations ----

TYPED_TEST(Kernels, SwiGlu) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int N = 37;
  for (int F : {173, 256, 1}) {
    SCOPED_TRACE(testing::Message() << "F " << F);
    const auto gu = round_to<T>(randn(size_t(N) * 2 * F, 8, 3.0f));
    const auto dout = round_to<T>(randn(size_t(N) * F, 9));
    std::vector<float> out(size_t(N) * F), dgu(gu.size());
    ops::ref::swiglu_forward(out.data(), gu.data(), N, F);
    ops::ref::swiglu_backward(dgu.data(), dout.data(), gu.data(), N, F);
    auto d_gu = gpu_from<T>(gu);
    auto d_dout = gpu_from<T>(dout);
    auto d_out = poisoned<T>(int64_t(out.size()));
    auto d_dgu = poisoned<T>(int64_t(dgu.size()));
    cuda::swiglu_forward<T>(d_out.data(), d_gu.data(), N, F, compute());
    cuda::swiglu_backward<T>(d_dgu.data(), d_dout.data(), d_gu.data(), N, F, compute());
    expect_close(floats_of(d_out), out, tol_out<T>(4), "swiglu out");
    expect_close(floats_of(d_dgu), dgu, tol_out<T>(4), "swiglu dgu");
  }
}

TYPED_TEST(Kernels, Gelu) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int64_t n = 10007;
  for (int64_t offset : {0, 1}) {  // 1: the element path
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    auto x = round_to<T>(randn(size_t(n + offset), 10, 3.0f));
    x[offset] = -30.0f, x[offset + 1] = 30.0f;  // the saturated tails
    const auto dout = round_to<T>(randn(x.size(), 11));
    std::vector<float> out(x.size()), dx(x.size());
    ops::ref::gelu_forward(out.data(), x.data() + offset, n);
    ops::ref::gelu_backward(dx.data(), dout.data() + offset, x.data() + offset, n);
    out.resize(size_t(n)), dx.resize(size_t(n));
    auto d_x = gpu_from<T>(x);
    auto d_dout = gpu_from<T>(dout);
    auto d_out = poisoned<T>(n + offset), d_dx = poisoned<T>(n + offset);
    cuda::gelu_forward<T>(at(d_out, offset), at(d_x, offset), n, compute());
    cuda::gelu_backward<T>(at(d_dx, offset), at(d_dout, offset), at(d_x, offset), n, compute());
    expect_close(tail_of<T>(floats_of(d_out), offset), out, tol_out<T>(4), "gelu out");
    expect_close(tail_of<T>(floats_of(d_dx), offset), dx, tol_out<T>(4), "gelu dx");
  }
}

// ---- elementwise ----

TYPED_TEST(Kernels, Add) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  const int64_t n = 10007;
  for (int64_t offset : {0, 1}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    const auto a = round_to<T>(randn(size_t(n + offset), 12));
    const auto b = round_to<T>(randn(size_t(n + offset), 13));
    std::vector<float> want(static_cast<size_t>(n));
    ops::ref::add(want.data(), a.data() + offset, b.data() + offset, n);
    auto d_a = gpu_from<T>(a), d_b = gpu_from<T>(b);
    auto d_out = poisoned<T>(n + offset);
    cuda::add<T>(at(d_out, offset), at(d_a, offset), at(d_b, offset), n, compute());
    expect_close(tail_of<T>(floats_of(d_out), offset), want, tol_out<T>(1), "add");
  }
}

TEST(Elementwise, ScaleIsExact) {
  KILN_REQUIRE_GPU();
  const int64_t n = 10007;
  for (int64_t offset : {0, 1}) {
    auto x = randn(size_t(n + offset), 14);
    auto d_x = to_gpu(x);
    cuda::scale(d_x.data() + offset, 0.37f, n, compute());
    ops::ref::scale(x.data() + offset, 0.37f, n);
    EXPECT_EQ(bits_of(to_cpu(d_x)), bits_of(x)) << "offset " << offset;
  }
}

double sum_squares_on_gpu(const float* x, int64_t n) {
  auto d = poisoned<double>(1);
  cuda::sum_squares(d.data(), x, n, compute());
  return to_cpu(d)[0];
}

// Against a double loop; the chunked order repeats, and reading x unaligned (element path) gives
// the same bits as reading the same values aligned.
TEST(Elementwise, SumSquares) {
  KILN_REQUIRE_GPU();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000), int64_t(1000003)}) {
    SCOPED_TRACE(testing::Message() << "n " << n);
    const auto x = randn(size_t(n + 1), 15);
    double want = 0.0;
    for (int64_t i = 0; i < n; ++i) want += double(x[size_t(i)]) * x[size_t(i)];
    auto d_x = to_gpu(x);
    const double got = sum_squares_on_gpu(d_x.data(), n);
    EXPECT_NEAR(got, want, 1e-12 * want + 1e-300);
    EXPECT_EQ(sum_squares_on_gpu(d_x.data(), n), got) << "a second run differs";
    // The same n values at an odd address.
    std::vector<float> shifted(size_t(n + 1));
    std::memcpy(shifted.data() + 1, x.data(), size_t(n) * 4);
    auto d_shifted = to_gpu(shifted);
    EXPECT_EQ(sum_squares_on_gpu(d_shifted.data() + 1, n), got) << "unaligned x differs";
  }
}

// ---- conversions: bit for bit as core/dtype.h ----

std::vector<float> floats_from_bits(const std::vector<uint32_t>& b) {
  std::vector<float> f(b.size());
  std::memcpy(f.data(), b.data(), b.size() * 4);
  return f;
}

TEST(Conversions, F32ToBf16IsDtypeBits) {
  KILN_REQUIRE_GPU();
  std::vector<uint32_t> bits = {
      0x00000000, 0x80000000,              // +-0
      0x3f800000, 0xbf800000,              // +-1
      0x7f800000, 0xff800000,              // +-inf
      0x7fc00000, 0xffc00000,              // quiet NaNs
      0x7f800001, 0xff800001, 0x7fbfffff,  // signalling NaNs: stay NaN
      0x7fff0000, 0x7fffffff,              // NaN whose rounding would carry
      0x00000001, 0x807fffff, 0x00008000,  // subnormals, a subnormal tie
      0x00018000, 0x00010000,              // subnormal ties to odd, exact
      0x3f808000, 0x3f818000,              // ties: to even (down), to even (up)
      0x3f808001, 0x3f807fff,              // just above, just below a tie
      0x7f7fffff, 0xff7fffff,              // largest finite: rounds to inf
      0x7f7f7fff,                          // largest that stays finite
  };
  std::mt19937_64 g(16);
  for (int i = 0; i < 100003; ++i) bits.push_back(uint32_t(g()));
  const auto f = floats_from_bits(bits);
  for (int64_t offset : {0, 1}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    const int64_t n = int64_t(f.size()) - offset;
    auto d_f = to_gpu(f);
    auto d_h = poisoned<cuda::bf16>(int64_t(f.size()));
    cuda::f32_to_bf16(d_h.data() + offset, d_f.data() + offset, n, compute());
    std::vector<uint16_t> got(f.size());
    cuda::to_host(got.data(), d_h.data(), got.size() * 2, compute());
    for (size_t i = size_t(offset); i < f.size(); ++i)
      ASSERT_EQ(got[i], f32_to_bf16(f[i])) << "f32 bits 0x" << std::hex << bits[i];
  }
}

TEST(Conversions, Bf16ToF32IsDtypeBits) {
  KILN_REQUIRE_GPU();
  std::vector<uint16_t> h(65536 + 1);
  for (size_t i = 0; i < 65536; ++i) h[i + 1] = uint16_t(i);
  for (int64_t offset : {0, 1}) {
    SCOPED_TRACE(testing::Message() << "offset " << offset);
    const int64_t n = int64_t(h.size()) - offset;
    cuda::DeviceBuffer<cuda::bf16> d_h(int64_t(h.size()), "test", compute());
    cuda::to_device(d_h.data(), h.data(), h.size() * 2, compute());
    auto d_f = poisoned<float>(int64_t(h.size()));
    cuda::bf16_to_f32(d_f.data() + offset, d_h.data() + offset, n, compute());
    const auto got = bits_of(to_cpu(d_f));
    for (size_t i = size_t(offset); i < h.size(); ++i) {
      const float want = bf16_to_f32(h[i]);
      uint32_t want_bits;
      std::memcpy(&want_bits, &want, 4);
      ASSERT_EQ(got[i], want_bits) << "bf16 bits 0x" << std::hex << h[i];
    }
  }
}

// Runs without a GPU: bad arguments are refused on the host.
TEST(KernelsHost, RejectsBadArguments) {
  EXPECT_THROW(cuda::rope_forward<float>(nullptr, 4, 2, 7, 14, nullptr, nullptr, nullptr, nullptr),
               Error);  // odd D
  EXPECT_THROW(cuda::rope_forward<float>(nullptr, 4, 2, 8, 15, nullptr, nullptr, nullptr, nullptr),
               Error);  // heads * D > stride
  EXPECT_THROW(cuda::swiglu_forward<cuda::bf16>(nullptr, nullptr, 4, 0, nullptr), Error);
  EXPECT_THROW(cuda::embedding_forward<float>(nullptr, nullptr, nullptr, 4, 0, false, nullptr),
               Error);
  EXPECT_THROW(cuda::gelu_forward<float>(nullptr, nullptr, -1, nullptr), Error);
  // Nothing to do is not an error, and touches no device.
  EXPECT_NO_THROW(cuda::add<float>(nullptr, nullptr, nullptr, 0, nullptr));
}

}  // namespace
}  // namespace kiln::test

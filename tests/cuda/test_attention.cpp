// cuda::attention_forward / attention_backward against ops::cpu::attention_* (the flash CPU
// kernels, themselves tested against ops::ref), float and bf16, on the generic path (any D) and
// the bf16 tensor-core path (D = 64, 128, 16-byte aligned pointers).
//
// Tolerances (relative to the largest |reference| element, as expect_close measures):
// - float: the GPU and the CPU both accumulate in fp32 in different orders; scores are dots of
//   length D, outputs sums over up to T keys, gradients sums over G*T queries of products of such
//   dots, so tol_f32 of the total sum length G*T*D bounds the rounding (a wrong mask or index is
//   off by O(1)).
// - bf16: inputs are rounded to bf16 on the host and the CPU oracle runs on the rounded values, so
//   only the GPU's own roundings count: P and dS rounded to bf16 before their products (8-bit
//   mantissa, errors averaging over the ~T terms of each sum) and the bf16 output: tol_bf16(T).
//   lse is fp32 from exact products: tol_bf16(1) covers P's rounding inside l.
#include "kiln/cuda/attention.h"

#include <cstring>

#include "cuda_test_util.h"
#include "kiln/ops/attention.h"

namespace kiln::cuda {
namespace {

using test::expect_close;
using test::randn;
using test::round_to;
using test::to_cpu;
using test::to_gpu;

struct Shape {
  int B, T, H, K, D;
  int64_t W() const { return int64_t(H + 2 * K) * D; }
  int64_t qkv() const { return int64_t(B) * T * W(); }
  int64_t out() const { return int64_t(B) * T * H * D; }
  int64_t lse() const { return int64_t(B) * H * T; }
};

struct Expected {
  std::vector<float> qkv, dout, out, lse, dqkv;
};

// Random inputs (rounded to bf16 when `bf16`) and the CPU forward and backward on them. The
// backward oracle takes the forward's out rounded like the GPU's (its Di = dO . O then matches).
Expected reference(const Shape& s, bool bf16, uint64_t seed) {
  Expected e;
  e.qkv = randn(size_t(s.qkv()), seed);
  e.dout = randn(size_t(s.out()), seed + 1);
  if (bf16) e.qkv = round_to<cuda::bf16>(e.qkv), e.dout = round_to<cuda::bf16>(e.dout);
  e.out.resize(size_t(s.out()));
  e.lse.resize(size_t(s.lse()));
  ops::cpu::attention_forward(e.out.data(), e.lse.data(), e.qkv.data(), s.B, s.T, s.H, s.K, s.D);
  if (bf16) e.out = round_to<cuda::bf16>(e.out);
  e.dqkv.resize(size_t(s.qkv()));
  ops::cpu::attention_backward(e.dqkv.data(), e.dout.data(), e.qkv.data(), e.out.data(),
                               e.lse.data(), s.B, s.T, s.H, s.K, s.D);
  return e;
}

// Device copies of T elements from floats, optionally `offset` elements into the allocation (an
// offset of 1 bf16 misaligns the pointer for the tensor-core path's 16-byte loads).
template <typename T>
struct Dev {
  DeviceBuffer<T> buf;
  int offset = 0;
  T* ptr() const { return buf.data() + offset; }
};

template <typename T>
Dev<T> upload_as(const std::vector<float>& f, int offset = 0) {
  Dev<T> d{DeviceBuffer<T>(int64_t(f.size()) + offset, "test", streams().compute.get()), offset};
  test::floats_to_gpu(d.ptr(), f);
  return d;
}

template <typename T>
Dev<T> poisoned_as(int64_t n, int offset = 0) {
  return Dev<T>{test::poisoned<T>(n + offset), offset};
}

template <typename T>
std::vector<float> download(const Dev<T>& d, int64_t n) {
  return test::floats_from_gpu(d.ptr(), n);
}

// Runs forward and backward on the GPU and compares with the CPU. The backward is fed the CPU's
// out and lse, so it is tested on its own.
template <typename T>
void check(const Shape& s, uint64_t seed, int offset = 0) {
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  SCOPED_TRACE(testing::Message() << (kBf16 ? "bf16" : "float") << " B=" << s.B << " T=" << s.T
                                  << " H=" << s.H << " K=" << s.K << " D=" << s.D
                                  << " offset=" << offset);
  const Expected e = reference(s, kBf16, seed);
  const int G = s.H / s.K;
  const test::Tol tol = kBf16 ? test::tol_bf16(s.T) : test::tol_f32(G * s.T * s.D);
  const test::Tol tol_lse = kBf16 ? test::tol_bf16(1) : test::tol_f32(s.T + s.D);
  auto st = streams().compute.get();

  auto qkv = upload_as<T>(e.qkv, offset);
  auto out = poisoned_as<T>(s.out(), offset);
  auto lse = test::poisoned<float>(s.lse());
  attention_forward<T>(out.ptr(), lse.data(), qkv.ptr(), s.B, s.T, s.H, s.K, s.D, st);
  expect_close(download(out, s.out()), e.out, tol, "out");
  expect_close(to_cpu(lse), e.lse, tol_lse, "lse");

  auto dout = upload_as<T>(e.dout, offset);
  auto out_ref = upload_as<T>(e.out, offset);
  auto lse_ref = to_gpu(e.lse);
  auto dqkv = poisoned_as<T>(s.qkv(), offset);
  attention_backward<T>(dqkv.ptr(), dout.ptr(), qkv.ptr(), out_ref.ptr(), lse_ref.data(), s.B, s.T,
                        s.H, s.K, s.D, st);
  const auto got = download(dqkv, s.qkv());
  // Compare the q, k and v parts separately: their magnitudes differ.
  for (int part = 0; part < 3; ++part) {
    const int h0 = part == 0 ? 0 : part == 1 ? s.H : s.H + s.K;
    const int nh = part == 0 ? s.H : s.K;
    std::vector<float> g, w;
    for (int64_t row = 0; row < int64_t(s.B) * s.T; ++row)
      for (int64_t x = 0; x < int64_t(nh) * s.D; ++x) {
        const int64_t i = row * s.W() + int64_t(h0) * s.D + x;
        g.push_back(got[size_t(i)]), w.push_back(e.dqkv[size_t(i)]);
      }
    expect_close(g, w, tol, part == 0 ? "dq" : part == 1 ? "dk" : "dv");
  }
}

TEST(CudaAttention, FloatMatchesCpu) {
  KILN_REQUIRE_GPU();
  check<float>({2, 37, 4, 2, 64}, 1);
  check<float>({1, 130, 3, 1, 40}, 2);
  check<float>({1, 45, 2, 2, 256}, 3);  // the largest D: > 48 KiB of shared memory
  check<float>({3, 1, 2, 1, 8}, 4);     // one position
  check<float>({1, 33, 6, 3, 7}, 5);    // odd D, T one past a tile
}

TEST(CudaAttention, Bf16TensorCoresMatchCpu) {
  KILN_REQUIRE_GPU();
  for (int D : {64, 128})
    for (int T : {77, 256}) check<bf16>({2, T, 8, 2, D}, 10 + D + T);
  check<bf16>({1, 5, 4, 4, 64}, 11);     // MHA, T below one tile
  check<bf16>({1, 129, 2, 1, 128}, 12);  // MQA, T one past two tiles
}

TEST(CudaAttention, Bf16GenericMatchesCpu) {
  KILN_REQUIRE_GPU();
  check<bf16>({2, 50, 4, 2, 40}, 20);  // D not 64/128
  check<bf16>({1, 70, 2, 1, 256}, 21);
  check<bf16>({1, 77, 4, 2, 64}, 22, 1);  // D = 64 but misaligned pointers: the generic path
}

TEST(CudaAttention, BackwardIsDeterministic) {
  KILN_REQUIRE_GPU();
  for (int D : {64, 40}) {
    const Shape s{2, 100, 8, 2, D};
    const Expected e = reference(s, true, 30);
    auto st = streams().compute.get();
    auto qkv = upload_as<bf16>(e.qkv), dout = upload_as<bf16>(e.dout), out = upload_as<bf16>(e.out);
    auto lse = to_gpu(e.lse);
    std::vector<uint16_t> first;
    for (int run = 0; run < 2; ++run) {
      auto dqkv = test::poisoned<bf16>(s.qkv());
      attention_backward<bf16>(dqkv.data(), dout.ptr(), qkv.ptr(), out.ptr(), lse.data(), s.B, s.T,
                               s.H, s.K, s.D, st);
      std::vector<uint16_t> h(size_t(s.qkv()));
      to_host(h.data(), dqkv.data(), h.size() * sizeof(uint16_t), st);
      if (run == 0)
        first = h;
      else
        EXPECT_EQ(std::memcmp(first.data(), h.data(), h.size() * 2), 0) << "D=" << D;
    }
  }
}

TEST(CudaAttention, RejectsBadShapes) {
  // Argument checks run on the host before any device work, so this needs no GPU.
  EXPECT_THROW(attention_forward<float>(nullptr, nullptr, nullptr, 1, 4, 3, 2, 64, nullptr), Error);
  EXPECT_THROW(attention_forward<float>(nullptr, nullptr, nullptr, 1, 4, 2, 2, 300, nullptr),
               Error);
  EXPECT_THROW(attention_forward<bf16>(nullptr, nullptr, nullptr, 1, 4, 2, 2, 36, nullptr), Error);
}

}  // namespace
}  // namespace kiln::cuda

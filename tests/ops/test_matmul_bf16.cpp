// bf16 GEMM: every backend this CPU can run (amx, avx512_bf16, fallback) against the double
// reference over odd shapes, all transpose combinations and alpha/beta; bf16 <-> fp32
// conversions bit for bit against core/dtype.h; determinism across thread counts (amx,
// avx512_bf16) and on repeat (fallback).
//
// Tolerance. A product of two bf16 values (8-bit significands) is exact in fp32, so the only
// error is the fp32 summation: a K-term sum in any order is off by at most K kU sum_k |a_ik b_kj|,
// plus one rounding each for alpha and the beta C term. Each element is allowed
// 2 (K + 2) kU (|alpha| sum_k |a_ik b_kj| + |beta c_ij|), the sum computed by ref on |A|, |B|
// (the factor 2 absorbs ref's own final rounding). The reference sees the same bf16 inputs, so
// no bf16 rounding enters the comparison.
//
// DISABLED_Timing prints GFLOP/s at the training benchmark's shapes for each backend and for
// OpenBLAS sgemm at 1 and 2 threads:
//   ./ops_test_matmul_bf16 --gtest_also_run_disabled_tests --gtest_filter='*Timing*'
#include "kiln/ops/matmul_bf16.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kiln/core/dtype.h"
#include "kiln/ops/matmul.h"
#include "op_test_util.h"

namespace kiln::ops {
namespace {

using cpu::Bf16Backend;
using test::all_within;
using test::bit_equal;
using test::kU;
using test::random_vector;
using test::ThreadCount;

std::vector<Bf16Backend> available_backends() {
  std::vector<Bf16Backend> out;
  for (Bf16Backend b : {Bf16Backend::amx, Bf16Backend::avx512_bf16, Bf16Backend::fallback})
    if (cpu::bf16_backend_available(b)) out.push_back(b);
  return out;
}

std::vector<uint16_t> random_bf16(int64_t n, uint64_t seed) {
  auto f = random_vector(n, seed);
  std::vector<uint16_t> h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = f32_to_bf16(f[i]);
  return h;
}

std::vector<uint16_t> abs_bf16(std::vector<uint16_t> v) {
  for (auto& x : v) x &= 0x7fff;
  return v;
}

// Runs one shape on every available backend against ref with the per-element bound above.
void check_gemm(int M, int N, int K, bool ta, bool tb, float alpha, float beta, uint64_t seed) {
  const auto a = random_bf16(int64_t(M) * K, seed), b = random_bf16(int64_t(K) * N, seed + 1);
  const auto c0 = random_vector(int64_t(M) * N, seed + 2);
  std::vector<float> want = c0, sum_abs(c0.size(), 0.0f);
  ref::gemm_bf16(want.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, beta);
  ref::gemm_bf16(sum_abs.data(), abs_bf16(a).data(), abs_bf16(b).data(), M, N, K, ta, tb, 1.0f,
                 0.0f);
  std::vector<double> bound(c0.size());
  for (size_t i = 0; i < bound.size(); ++i)
    bound[i] =
        2.0 * (K + 2) * kU * (std::fabs(alpha) * sum_abs[i] + std::fabs(beta) * std::fabs(c0[i])) +
        1e-37;  // the kernels flush subnormal results
  for (Bf16Backend be : available_backends()) {
    std::vector<float> got = c0;
    if (beta == 0.0f) got.assign(got.size(), std::numeric_limits<float>::quiet_NaN());  // not read
    cpu::gemm_bf16_on(be, got.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, beta);
    EXPECT_TRUE(all_within(got, want, bound))
        << cpu::bf16_backend_name(be) << " M=" << M << " N=" << N << " K=" << K << " ta=" << ta
        << " tb=" << tb << " alpha=" << alpha << " beta=" << beta;
  }
}

TEST(GemmBf16, BackendsMatchRefOddShapes) {
  const int dims[] = {1, 7, 13, 31, 33, 97, 130};
  uint64_t seed = 1;
  for (int M : dims)
    for (int N : dims)
      for (int K : dims)
        for (int t = 0; t < 4; ++t) check_gemm(M, N, K, t & 1, t & 2, 1.0f, 0.0f, seed += 3);
}

// alpha == 1 with beta 0 or 1 on whole 32x32 blocks takes AMX's store-from-tile path; the rest
// go through the scaled epilogue. K = 0 leaves alpha * 0 + beta * C.
TEST(GemmBf16, AlphaBeta) {
  const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, 0.0f}, {-1.5f, 0.25f}, {1.0f, -2.0f}};
  const int dims[] = {1, 33, 64, 130};
  uint64_t seed = 7;
  for (auto [alpha, beta] : ab)
    for (int M : dims)
      for (int N : dims)
        for (int t = 0; t < 4; ++t) {
          check_gemm(M, N, 64, t & 1, t & 2, alpha, beta, seed += 3);
          check_gemm(M, N, 45, t & 1, t & 2, alpha, beta, seed += 3);
        }
  check_gemm(33, 17, 0, false, false, 1.0f, 0.5f, 99);
  check_gemm(64, 64, 0, true, true, 1.0f, 0.0f, 98);
}

// The training shapes' proportions (every transpose the linear layer uses), smaller for speed.
TEST(GemmBf16, Large) {
  check_gemm(256, 512, 256, false, true, 1.0f, 0.0f, 100);   // forward, W (out,in)
  check_gemm(256, 256, 704, false, false, 1.0f, 0.0f, 200);  // backward dx
  check_gemm(352, 256, 512, true, false, 1.0f, 1.0f, 300);   // backward dW += dy^T x
  check_gemm(96, 160, 1000, true, true, 1.0f, 0.0f, 400);
  // K > 512 runs AMX in several passes over K, with each alpha/beta path.
  check_gemm(70, 100, 600, true, false, 1.0f, 1.0f, 500);
  check_gemm(64, 96, 1100, false, true, 1.0f, 1.0f, 600);
  check_gemm(64, 96, 1100, false, false, 0.5f, 0.25f, 700);
}

// amx and avx512_bf16 give the same bits at 1 and 2 threads; fallback (OpenBLAS) the same bits
// on a repeat at a given thread count. K = 777 runs AMX in two passes over K.
TEST(GemmBf16, Deterministic) {
  const int M = 161, N = 300, K = 777;
  for (int t = 0; t < 4; ++t) {
    const auto a = random_bf16(int64_t(M) * K, 11 + t), b = random_bf16(int64_t(K) * N, 12 + t);
    for (Bf16Backend be : available_backends()) {
      const bool any_count = be != Bf16Backend::fallback;
      std::vector<float> one(int64_t(M) * N, 1.0f), two = one;
      {
        ThreadCount tc(any_count ? 1 : 2);
        cpu::gemm_bf16_on(be, one.data(), a.data(), b.data(), M, N, K, t & 1, t & 2, 1.0f, 1.0f);
      }
      {
        ThreadCount tc(2);
        cpu::gemm_bf16_on(be, two.data(), a.data(), b.data(), M, N, K, t & 1, t & 2, 1.0f, 1.0f);
      }
      EXPECT_TRUE(bit_equal(one, two)) << cpu::bf16_backend_name(be) << " t=" << t;
    }
  }
}

TEST(GemmBf16, BackendChoice) {
  const auto name = cpu::bf16_backend();
  EXPECT_TRUE(name == "amx" || name == "avx512_bf16" || name == "fallback") << name;
  if (const char* env = std::getenv("KILN_BF16_BACKEND"); env && *env) {
    EXPECT_EQ(name, env);
  }
  EXPECT_TRUE(cpu::bf16_backend_available(cpu::bf16_backend_kind()));
  // The default path is the chosen backend's, bit for bit.
  const auto a = random_bf16(40 * 50, 5), b = random_bf16(50 * 60, 6);
  std::vector<float> x(40 * 60), y(40 * 60);
  cpu::gemm_bf16(x.data(), a.data(), b.data(), 40, 60, 50, false, false, 1.0f, 0.0f);
  cpu::gemm_bf16_on(cpu::bf16_backend_kind(), y.data(), a.data(), b.data(), 40, 60, 50, false,
                    false, 1.0f, 0.0f);
  EXPECT_TRUE(bit_equal(x, y));
}

TEST(Bf16Convert, ToF32EveryValue) {
  std::vector<uint16_t> h(65536 + 7);
  for (size_t i = 0; i < h.size(); ++i) h[i] = uint16_t(i);
  std::vector<float> got(h.size());
  cpu::bf16_to_f32(got.data(), h.data(), int64_t(h.size()));
  for (size_t i = 0; i < h.size(); ++i) {
    const float want = bf16_to_f32(h[i]);
    ASSERT_EQ(std::memcmp(&got[i], &want, 4), 0) << "bf16 0x" << std::hex << h[i];
  }
}

TEST(Bf16Convert, FromF32BitExact) {
  // Random bit patterns (every exponent, subnormals, NaNs) plus the rounding boundaries.
  Rng rng(3);
  std::vector<uint32_t> bits(3000001);
  for (auto& u : bits) u = uint32_t(rng.next_u64());
  const uint32_t special[] = {0x00000000, 0x80000000, 0x00008000, 0x00018000, 0x00017fff,
                              0x3f808000, 0x3f818000, 0x3f80ffff, 0x7f7fffff, 0x7f7f8000,
                              0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0x807fffff};
  for (size_t i = 0; i < std::size(special); ++i) bits[i] = special[i];
  std::vector<float> f(bits.size());
  std::memcpy(f.data(), bits.data(), bits.size() * 4);
  std::vector<uint16_t> got(f.size());
  cpu::f32_to_bf16(got.data(), f.data(), int64_t(f.size()));
  for (size_t i = 0; i < f.size(); ++i) {
    const uint16_t want = f32_to_bf16(f[i]);
    if (std::isnan(f[i]))
      ASSERT_TRUE(std::isnan(bf16_to_f32(got[i]))) << "f32 0x" << std::hex << bits[i];
    else
      ASSERT_EQ(got[i], want) << "f32 0x" << std::hex << bits[i];
  }
}

// ---- timing (not run by default) -------------------------------------------------------------

template <typename F>
double best_seconds(F&& f) {
  f();  // warm: packs, pages, AMX state
  double best = 1e30;
  for (int rep = 0; rep < 25; ++rep) {  // best of many: the cores are shared
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

TEST(GemmBf16, DISABLED_Timing) {
  struct Shape {
    const char* what;
    int M, N, K;
    bool ta, tb;
  };
  // Training benchmark: N = B*T = 2048 rows, C = 256, F = 704, V = 8192.
  const Shape shapes[] = {
      {"fwd qkv", 2048, 512, 256, false, true},  {"fwd up", 2048, 1408, 256, false, true},
      {"fwd down", 2048, 256, 704, false, true}, {"lm head", 256, 8192, 256, false, true},
      {"bwd dX", 2048, 256, 1408, false, false}, {"bwd dW", 1408, 256, 2048, true, false},
  };
  std::printf("%-9s %-18s %3s %9s %12s %9s %9s %9s\n", "shape", "MxNxK", "thr", "amx",
              "avx512_bf16", "fallback", "sgemm", "amx/sg");
  for (const Shape& s : shapes) {
    const auto a = random_bf16(int64_t(s.M) * s.K, 1), b = random_bf16(int64_t(s.K) * s.N, 2);
    std::vector<float> af(a.size()), bf(b.size()), c(int64_t(s.M) * s.N);
    cpu::bf16_to_f32(af.data(), a.data(), int64_t(a.size()));
    cpu::bf16_to_f32(bf.data(), b.data(), int64_t(b.size()));
    const double gflop = 2.0 * s.M * s.N * s.K * 1e-9;
    for (int threads : {1, 2}) {
      ThreadCount tc(threads);
      double rate[3] = {0, 0, 0};
      for (Bf16Backend be : available_backends())
        rate[int(be)] = gflop / best_seconds([&] {
                          cpu::gemm_bf16_on(be, c.data(), a.data(), b.data(), s.M, s.N, s.K, s.ta,
                                            s.tb, 1.0f, 0.0f);
                        });
      const double sg =
          gflop / best_seconds([&] {
            cpu::gemm(c.data(), af.data(), bf.data(), s.M, s.N, s.K, s.ta, s.tb, 1.0f, 0.0f);
          });
      char dims[32];
      std::snprintf(dims, sizeof dims, "%dx%dx%d%s%s", s.M, s.N, s.K, s.ta ? "'" : "",
                    s.tb ? "^T" : "");
      std::printf("%-9s %-18s %3d %9.0f %12.0f %9.0f %9.0f %8.1fx\n", s.what, dims, threads,
                  rate[0], rate[1], rate[2], sg, rate[0] / sg);
    }
  }
}

}  // namespace
}  // namespace kiln::ops

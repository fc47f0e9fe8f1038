// cuBLASLt GEMMs and the linear layer on the GPU against the CPU: gemm vs ops::ref::gemm (every
// transpose pair, odd shapes, beta accumulate, TF32, bf16 and fp16 inputs), the fused epilogues
// vs host loops, and linear_forward/backward vs ops::cpu for both weight layouts.
//
// Tolerances (relative to the largest |reference| element, see cuda_test_util.h):
//   fp32 in/out: tol_f32(K) (the same sums in another order).
//   TF32, and 16-bit inputs with fp32 out: tol_tf32(K) (inputs rounded to a 10-bit mantissa for
//     TF32; for bf16/fp16 the products are exact and the tensor cores' fp32 accumulation may
//     truncate while aligning).
//   16-bit outputs: tol_bf16(K) (one rounding of the result, plus the above).
//   GELU epilogues: at least tol_tf32(K): cuBLASLt may evaluate tanh with the hardware
//     approximation (~2^-11 relative).
#include "kiln/cuda/gemm.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "cuda_test_util.h"
#include "kiln/ops/activation.h"
#include "kiln/ops/matmul.h"

namespace kiln::cuda {
namespace {

using test::expect_close;
using test::floats_of;
using test::gpu_from;
using test::randn;
using test::round_to;
using test::Tol;

// Sets TF32 for one scope.
struct Tf32Scope {
  bool was = tf32();
  explicit Tf32Scope(bool on) { set_tf32(on); }
  ~Tf32Scope() { set_tf32(was); }
};

// The largest of two tolerances, per component.
Tol loosest(Tol a, Tol b) {
  return {std::max(a.rel, b.rel), std::max(a.abs, b.abs)};
}

std::vector<float> gelu(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  ops::ref::gelu_forward(y.data(), x.data(), int64_t(x.size()));
  return y;
}

// One gemm<TIn, TOut> vs ref::gemm on the inputs rounded to TIn. beta != 0: C starts random.
template <typename TIn, typename TOut>
void check_gemm(int M, int N, int K, bool ta, bool tb, float alpha, float beta, Tol tol,
                uint64_t seed) {
  auto a = round_to<TIn>(randn(size_t(M) * K, seed));
  auto b = round_to<TIn>(randn(size_t(K) * N, seed + 1));
  auto c0 = round_to<TOut>(randn(size_t(M) * N, seed + 2));
  auto da = gpu_from<TIn>(a), db = gpu_from<TIn>(b);
  auto dc = test::poisoned<TOut>(int64_t(M) * N);
  if (beta != 0.0f) dc = gpu_from<TOut>(c0);
  std::vector<float> want = c0;
  ops::ref::gemm(want.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, beta);
  gemm<TIn, TOut>(dc.data(), da.data(), db.data(), M, N, K, ta, tb, alpha, beta, streams().compute);
  std::string what = str("gemm M=", M, " N=", N, " K=", K, " ta=", ta, " tb=", tb, " beta=", beta);
  expect_close(floats_of(dc), want, tol, what.c_str());
}

struct Shape {
  int M, N, K;
};
const Shape kShapes[] = {{37, 61, 129}, {1, 1, 1}, {300, 7, 515}, {64, 128, 256}, {5, 33, 8}};

TEST(CudaGemm, Fp32MatchesRefEveryTransposeOddShapes) {
  KILN_REQUIRE_GPU();
  Tf32Scope exact(false);
  uint64_t seed = 1;
  for (auto [M, N, K] : kShapes)
    for (int t = 0; t < 4; ++t)
      check_gemm<float, float>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_f32(K), seed += 3);
}

TEST(CudaGemm, BetaAccumulatesIntoC) {
  KILN_REQUIRE_GPU();
  Tf32Scope exact(false);
  uint64_t seed = 100;
  for (auto [M, N, K] : kShapes)
    for (int t = 0; t < 4; ++t) {
      check_gemm<float, float>(M, N, K, t & 1, t & 2, 0.5f, 1.0f, test::tol_f32(K), seed += 3);
      check_gemm<float, float>(M, N, K, t & 1, t & 2, 1.0f, -1.5f, test::tol_f32(K), seed += 3);
    }
}

TEST(CudaGemm, Tf32WithinTf32Tolerance) {
  KILN_REQUIRE_GPU();
  Tf32Scope fast(true);
  uint64_t seed = 200;
  for (auto [M, N, K] : kShapes)
    for (int t = 0; t < 4; ++t)
      check_gemm<float, float>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_tf32(K), seed += 3);
}

TEST(CudaGemm, Bf16Inputs) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 300;
  for (auto [M, N, K] : kShapes)
    for (int t = 0; t < 4; ++t) {
      check_gemm<bf16, float>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_tf32(K), seed += 3);
      check_gemm<bf16, float>(M, N, K, t & 1, t & 2, 1.0f, 1.0f, test::tol_tf32(K), seed += 3);
      check_gemm<bf16, bf16>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_bf16(K), seed += 3);
      check_gemm<bf16, bf16>(M, N, K, t & 1, t & 2, 0.5f, 1.0f, test::tol_bf16(K), seed += 3);
    }
}

TEST(CudaGemm, Fp16Inputs) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 400;
  for (auto [M, N, K] : kShapes)
    for (int t = 0; t < 4; ++t) {
      check_gemm<f16, float>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_tf32(K), seed += 3);
      check_gemm<f16, f16>(M, N, K, t & 1, t & 2, 1.0f, 0.0f, test::tol_bf16(K), seed += 3);
    }
}

// Epilogues vs host loops: v = alpha A B + beta C + bias, aux = v, D = gelu(v) or v.
template <typename TIn, typename TOut>
void check_epilogue(int M, int N, int K, Epilogue ep, bool with_aux, float beta, Tol tol,
                    uint64_t seed) {
  const bool has_bias = ep == Epilogue::bias || ep == Epilogue::bias_gelu;
  const bool has_gelu = ep == Epilogue::gelu || ep == Epilogue::bias_gelu;
  auto a = round_to<TIn>(randn(size_t(M) * K, seed));
  auto b = round_to<TIn>(randn(size_t(K) * N, seed + 1));
  auto c0 = round_to<TOut>(randn(size_t(M) * N, seed + 2));
  auto bias = randn(size_t(N), seed + 3);
  std::vector<float> pre = c0;
  ops::ref::gemm(pre.data(), a.data(), b.data(), M, N, K, false, true, 1.0f, beta);
  if (has_bias)
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) pre[size_t(i) * N + j] += bias[j];
  const std::vector<float> want = has_gelu ? gelu(pre) : pre;

  auto da = gpu_from<TIn>(a), db = gpu_from<TIn>(b), dbias = gpu_from<float>(bias);
  auto dc = beta != 0.0f ? gpu_from<TOut>(c0) : test::poisoned<TOut>(int64_t(M) * N);
  auto daux = test::poisoned<TOut>(int64_t(M) * N);
  gemm<TIn, TOut>(dc.data(), da.data(), db.data(), M, N, K, false, true, 1.0f, beta,
                  streams().compute, ep, has_bias ? dbias.data() : nullptr,
                  with_aux ? daux.data() : nullptr);
  std::string what =
      str("epilogue ", int(ep), " aux=", with_aux, " M=", M, " N=", N, " K=", K, " beta=", beta);
  expect_close(floats_of(dc), want, tol, what.c_str());
  if (with_aux) expect_close(floats_of(daux), pre, tol, (what + " (aux)").c_str());
}

// N % 8 == 0 takes cuBLASLt's fused epilogue (aux needs it); odd N the elementwise kernel.
const Shape kEpilogueShapes[] = {{37, 64, 129}, {37, 61, 129}, {1, 1, 1}, {128, 96, 64}};

TEST(CudaGemm, EpiloguesFp32) {
  KILN_REQUIRE_GPU();
  Tf32Scope exact(false);
  uint64_t seed = 500;
  for (auto [M, N, K] : kEpilogueShapes) {
    const Tol t = test::tol_f32(K), tg = loosest(t, test::tol_tf32(K));
    check_epilogue<float, float>(M, N, K, Epilogue::bias, false, 0.0f, t, seed += 5);
    check_epilogue<float, float>(M, N, K, Epilogue::bias, false, 1.0f, t, seed += 5);
    check_epilogue<float, float>(M, N, K, Epilogue::gelu, false, 0.0f, tg, seed += 5);
    check_epilogue<float, float>(M, N, K, Epilogue::gelu, true, 0.0f, tg, seed += 5);
    check_epilogue<float, float>(M, N, K, Epilogue::bias_gelu, false, 0.0f, tg, seed += 5);
    check_epilogue<float, float>(M, N, K, Epilogue::bias_gelu, true, 0.0f, tg, seed += 5);
  }
}

// The GELU itself, at the scale where its shape shows (the GEMM tests above see |x| ~ sqrt(K)):
// D = gelu(x 1^T + bias) for x in [-6, 6], fused (N = 8) and as the separate kernel (N = 5).
// 2e-3 absolute allows a hardware tanh (~2^-11 relative) at |x| = 6.
TEST(CudaGemm, GeluEpilogueIsGpt2Gelu) {
  KILN_REQUIRE_GPU();
  const int M = 97, K = 1;
  std::vector<float> x(M);
  for (int i = 0; i < M; ++i) x[i] = -6.0f + 12.0f * float(i) / float(M - 1);
  for (int N : {8, 5}) {
    std::vector<float> ones(N, 1.0f), bias(N), pre(size_t(M) * N);
    for (int j = 0; j < N; ++j) bias[j] = 0.125f * float(j) - 0.25f;
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) pre[size_t(i) * N + j] = x[i] + bias[j];
    auto da = gpu_from<float>(x), db = gpu_from<float>(ones), dbias = gpu_from<float>(bias);
    auto dc = test::poisoned<float>(int64_t(M) * N), daux = test::poisoned<float>(int64_t(M) * N);
    gemm<float, float>(dc.data(), da.data(), db.data(), M, N, K, false, true, 1.0f, 0.0f,
                       streams().compute, Epilogue::bias_gelu, dbias.data(), daux.data());
    std::string what = str("gelu N=", N);
    expect_close(floats_of(dc), gelu(pre), Tol{0.0, 2e-3}, what.c_str());
    expect_close(floats_of(daux), pre, Tol{0.0, 1e-6}, (what + " (aux)").c_str());
  }
}

// Whether cuBLASLt fuses the epilogues of GPT-2's shapes (both answers are correct; this one is
// about speed, so it is reported, not required).
TEST(CudaGemm, ReportsWhetherGpt2EpiloguesFuse) {
  KILN_REQUIRE_GPU();
  const int N = 64, C = 768;
  for (int bf = 0; bf < 2; ++bf) {
    const int64_t before = unfused_epilogues();
    if (bf)
      check_epilogue<bf16, bf16>(N, 4 * C, C, Epilogue::bias_gelu, true, 0.0f, test::tol_bf16(C),
                                 1000);
    else
      check_epilogue<float, float>(N, 4 * C, C, Epilogue::bias_gelu, true, 0.0f, test::tol_tf32(C),
                                   1000);
    std::printf("%s bias+gelu+aux (64 x 3072 x 768): %s\n", bf ? "bf16" : "fp32",
                unfused_epilogues() == before ? "fused by cuBLASLt" : "separate kernel");
  }
}

TEST(CudaGemm, EpiloguesBf16) {
  KILN_REQUIRE_GPU();
  uint64_t seed = 600;
  for (auto [M, N, K] : kEpilogueShapes) {
    const Tol t = test::tol_bf16(K), tf = test::tol_tf32(K);
    check_epilogue<bf16, bf16>(M, N, K, Epilogue::bias, false, 0.0f, t, seed += 5);
    check_epilogue<bf16, bf16>(M, N, K, Epilogue::gelu, false, 0.0f, t, seed += 5);
    check_epilogue<bf16, bf16>(M, N, K, Epilogue::bias_gelu, false, 0.0f, t, seed += 5);
    check_epilogue<bf16, bf16>(M, N, K, Epilogue::bias_gelu, true, 0.0f, t, seed += 5);
    check_epilogue<bf16, float>(M, N, K, Epilogue::bias, false, 0.0f, tf, seed += 5);
    check_epilogue<bf16, float>(M, N, K, Epilogue::bias_gelu, true, 0.0f, tf, seed += 5);
  }
}

TEST(CudaGemm, RejectsMisuse) {
  KILN_REQUIRE_GPU();
  auto d = test::poisoned<float>(16);
  auto s = streams().compute.get();
  auto no_bias = [&] {  // the bias epilogue without a bias
    gemm<float, float>(d.data(), d.data(), d.data(), 2, 2, 2, false, false, 1, 0, s,
                       Epilogue::bias);
  };
  auto empty_sum = [&] {  // K = 0
    gemm<float, float>(d.data(), d.data(), d.data(), 2, 2, 0, false, false, 1, 0, s);
  };
  EXPECT_THROW(no_bias(), Error);
  EXPECT_THROW(empty_sum(), Error);
}

// ---- the linear layer vs ops::cpu (fp32; the bf16 case runs cpu on the rounded inputs) ----

struct LinearShape {
  int N, IN, OUT;
};
// OUT % 8 == 0 fuses bias+GELU+pre in cuBLASLt; OUT = 45 takes the elementwise epilogue.
const LinearShape kLinearShapes[] = {{37, 61, 48}, {5, 24, 45}, {1, 1, 1}};
const ops::WeightLayout kLayouts[] = {ops::WeightLayout::out_in, ops::WeightLayout::in_out};

template <typename T>
void check_linear_forward(LinearShape sh, ops::WeightLayout layout, bool with_bias, bool with_gelu,
                          uint64_t seed) {
  const auto [N, IN, OUT] = sh;
  auto x = round_to<T>(randn(size_t(N) * IN, seed));
  auto w = round_to<T>(randn(size_t(IN) * OUT, seed + 1, 0.5f));
  auto bias = randn(size_t(OUT), seed + 2);
  std::vector<float> pre(size_t(N) * OUT);
  ops::cpu::linear_forward(pre.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, N, IN,
                           OUT, layout);
  auto dx = gpu_from<T>(x), dw = gpu_from<T>(w), db = gpu_from<float>(bias);
  auto dy = test::poisoned<T>(int64_t(N) * OUT), dpre = test::poisoned<T>(int64_t(N) * OUT);
  linear_forward<T>(dy.data(), dx.data(), dw.data(), with_bias ? db.data() : nullptr, N, IN, OUT,
                    layout, streams().compute, with_gelu, with_gelu ? dpre.data() : nullptr);
  const Tol tol = !std::is_same_v<T, float> ? test::tol_bf16(IN)
                  : with_gelu               ? test::tol_tf32(IN)
                                            : test::tol_f32(IN);
  std::string what = str("linear_forward N=", N, " IN=", IN, " OUT=", OUT, " layout=", int(layout),
                         " bias=", with_bias, " gelu=", with_gelu);
  expect_close(floats_of(dy), with_gelu ? gelu(pre) : pre, tol, what.c_str());
  if (with_gelu) expect_close(floats_of(dpre), pre, tol, (what + " (pre)").c_str());
}

template <typename T>
void check_linear_backward(LinearShape sh, ops::WeightLayout layout, bool with_dx, bool with_dw,
                           bool with_db, uint64_t seed) {
  const auto [N, IN, OUT] = sh;
  auto x = round_to<T>(randn(size_t(N) * IN, seed));
  auto w = round_to<T>(randn(size_t(IN) * OUT, seed + 1, 0.5f));
  auto dy = round_to<T>(randn(size_t(N) * OUT, seed + 2));
  auto dw0 = randn(size_t(IN) * OUT, seed + 3), db0 = randn(size_t(OUT), seed + 4);
  std::vector<float> want_dx(size_t(N) * IN), want_dw = dw0, want_db = db0;
  ops::cpu::linear_backward(with_dx ? want_dx.data() : nullptr, with_dw ? want_dw.data() : nullptr,
                            with_db ? want_db.data() : nullptr, dy.data(), x.data(), w.data(), N,
                            IN, OUT, layout);
  auto gx = gpu_from<T>(x), gw = gpu_from<T>(w), gdy = gpu_from<T>(dy);
  auto gdx = test::poisoned<T>(int64_t(N) * IN);
  auto gdw = gpu_from<float>(dw0), gdb = gpu_from<float>(db0);
  linear_backward<T>(with_dx ? gdx.data() : nullptr, with_dw ? gdw.data() : nullptr,
                     with_db ? gdb.data() : nullptr, gdy.data(), gx.data(), gw.data(), N, IN, OUT,
                     layout, streams().compute);
  const bool f32 = std::is_same_v<T, float>;
  std::string what = str("linear_backward N=", N, " IN=", IN, " OUT=", OUT, " layout=", int(layout),
                         " dx=", with_dx, " dw=", with_dw, " db=", with_db);
  if (with_dx)
    expect_close(floats_of(gdx), want_dx, f32 ? test::tol_f32(OUT) : test::tol_bf16(OUT),
                 (what + " dx").c_str());
  // Null outputs are not written: dw and dbias must still hold their starting values.
  expect_close(floats_of(gdw), want_dw, f32 ? test::tol_f32(N) : test::tol_tf32(N),
               (what + " dw").c_str());
  expect_close(floats_of(gdb), want_db, test::tol_f32(N), (what + " dbias").c_str());
}

TEST(CudaLinear, ForwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  Tf32Scope exact(false);
  uint64_t seed = 700;
  for (auto sh : kLinearShapes)
    for (auto layout : kLayouts)
      for (int v = 0; v < 4; ++v) {
        check_linear_forward<float>(sh, layout, v & 1, v & 2, seed += 3);
        check_linear_forward<bf16>(sh, layout, v & 1, v & 2, seed += 3);
      }
}

TEST(CudaLinear, BackwardMatchesCpu) {
  KILN_REQUIRE_GPU();
  Tf32Scope exact(false);
  uint64_t seed = 800;
  for (auto sh : kLinearShapes)
    for (auto layout : kLayouts)
      for (int v = 0; v < 8; ++v) {
        check_linear_backward<float>(sh, layout, v & 1, v & 2, v & 4, seed += 5);
        check_linear_backward<bf16>(sh, layout, v & 1, v & 2, v & 4, seed += 5);
      }
}

// Many rows: the bias gradient spans several fixed row chunks, and repeats bit for bit.
TEST(CudaLinear, BiasGradientManyRowsIsDeterministic) {
  KILN_REQUIRE_GPU();
  const int N = 1000, OUT = 77;
  auto dy = randn(size_t(N) * OUT, 900);
  std::vector<float> want(OUT, 0.0f);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OUT; ++o) want[o] += dy[size_t(n) * OUT + o];
  auto gdy = gpu_from<float>(dy);
  auto gdb1 = gpu_from<float>(std::vector<float>(OUT, 0.0f)),
       gdb2 = gpu_from<float>(std::vector<float>(OUT, 0.0f));
  bias_backward<float>(gdb1.data(), gdy.data(), N, OUT, streams().compute);
  bias_backward<float>(gdb2.data(), gdy.data(), N, OUT, streams().compute);
  auto a = floats_of(gdb1), b = floats_of(gdb2);
  expect_close(a, want, test::tol_f32(N), "bias_backward");
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

}  // namespace
}  // namespace kiln::cuda

// The fused LM head + cross-entropy on the GPU vs ops::ref::lm_head_cross_entropy: fp32 and bf16
// (the reference runs on the bf16-rounded h and W), ignored targets, one chunk and several.
//
// Tolerances (relative to the largest |reference| element, see cuda_test_util.h):
//   fp32: losses and dh tol_f32(V) (a V-term sum), dw tol_f32(N).
//   bf16: losses tol_tf32(C) (fp32 logits from exact bf16 products, tensor-core accumulation);
//     dh (bf16 out) tol_bf16(V) and dw tol_bf16(N): dlogits is rounded to bf16 for both GEMMs.
#include "kiln/cuda/cross_entropy.h"

#include <cmath>
#include <vector>

#include "cuda_test_util.h"
#include "kiln/cuda/gemm.h"
#include "kiln/ops/cross_entropy.h"

namespace kiln::cuda {
namespace {

using test::expect_close;
using test::floats_of;
using test::gpu_from;
using test::randn;
using test::round_to;
using test::Tol;

// Targets in [0, V) with every fifth (and the first) ignored.
std::vector<int> make_targets(int N, int V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int> t(N);
  for (int n = 0; n < N; ++n) t[n] = n % 5 == 0 ? -1 : int(g() % uint64_t(V));
  return t;
}

template <typename T>
void check_cross_entropy(int N, int C, int V, float grad_scale, bool train, int chunk_rows,
                         uint64_t seed) {
  auto h = round_to<T>(randn(size_t(N) * C, seed));
  auto w = round_to<T>(randn(size_t(V) * C, seed + 1, 0.2f));
  auto dw0 = randn(size_t(V) * C, seed + 2, 0.1f);
  auto targets = make_targets(N, V, seed + 3);

  std::vector<float> want_loss(N), want_dh(size_t(N) * C), want_dw = dw0;
  ops::ref::lm_head_cross_entropy(want_loss.data(), train ? want_dh.data() : nullptr,
                                  train ? want_dw.data() : nullptr, h.data(), w.data(),
                                  targets.data(), N, C, V, grad_scale);

  auto gh = gpu_from<T>(h), gw = gpu_from<T>(w), gdw = gpu_from<float>(dw0);
  auto gt = test::to_gpu(targets);
  auto gloss = test::poisoned<float>(N);
  auto gdh = test::poisoned<T>(int64_t(N) * C);
  lm_head_cross_entropy<T>(gloss.data(), train ? gdh.data() : nullptr, train ? gdw.data() : nullptr,
                           gh.data(), gw.data(), gt.data(), N, C, V, grad_scale, streams().compute,
                           chunk_rows);

  const bool f32 = std::is_same_v<T, float>;
  std::string what = str(f32 ? "fp32" : "bf16", " N=", N, " C=", C, " V=", V, " train=", train,
                         " chunk_rows=", chunk_rows);
  auto loss = floats_of(gloss);
  expect_close(loss, want_loss, f32 ? test::tol_f32(V) : test::tol_tf32(C),
               (what + " losses").c_str());
  for (int n = 0; n < N; ++n)
    if (targets[n] < 0) {
      EXPECT_EQ(loss[n], 0.0f) << what << " ignored row " << n;
    }
  // Without training dw keeps its starting values exactly.
  expect_close(floats_of(gdw), want_dw, f32 ? test::tol_f32(N) : test::tol_bf16(N),
               (what + " dw").c_str());
  if (!train) return;
  auto dh = floats_of(gdh);
  expect_close(dh, want_dh, f32 ? test::tol_f32(V) : test::tol_bf16(V), (what + " dh").c_str());
  for (int n = 0; n < N; ++n)
    if (targets[n] < 0) {
      for (int c = 0; c < C; ++c)
        ASSERT_EQ(dh[size_t(n) * C + c], 0.0f)
            << what << " ignored row " << n << " dh[" << c << "]";
    }
}

TEST(CudaCrossEntropy, Fp32MatchesRef) {
  KILN_REQUIRE_GPU();
  set_tf32(false);
  check_cross_entropy<float>(37, 48, 301, 0.5f, true, 0, 1);
  check_cross_entropy<float>(37, 48, 301, 0.5f, false, 0, 2);
  check_cross_entropy<float>(2, 1, 1, 1.0f, true, 0, 3);
  check_cross_entropy<float>(3, 7, 2000, 1.0f, true, 0, 4);  // a row longer than the block
}

TEST(CudaCrossEntropy, Bf16MatchesRefOnRoundedInputs) {
  KILN_REQUIRE_GPU();
  check_cross_entropy<bf16>(37, 48, 301, 0.5f, true, 0, 11);
  check_cross_entropy<bf16>(37, 48, 301, 0.5f, false, 0, 12);
  check_cross_entropy<bf16>(3, 7, 2000, 1.0f, true, 0, 13);
}

// chunk_rows = 8 over N = 37: four full chunks and one of 5 rows; 1 row per chunk too.
TEST(CudaCrossEntropy, SeveralChunksMatchOne) {
  KILN_REQUIRE_GPU();
  set_tf32(false);
  check_cross_entropy<float>(37, 48, 301, 0.5f, true, 8, 21);
  check_cross_entropy<float>(37, 48, 301, 0.5f, true, 1, 22);
  check_cross_entropy<float>(37, 48, 301, 0.5f, false, 8, 23);
  check_cross_entropy<bf16>(37, 48, 301, 0.5f, true, 8, 24);
  check_cross_entropy<bf16>(37, 48, 301, 0.5f, true, 100, 25);  // more than N: one chunk
}

// A target outside the vocabulary cannot be reported without a sync: its loss is NaN.
TEST(CudaCrossEntropy, TargetOutsideVocabularyGivesNaNLoss) {
  KILN_REQUIRE_GPU();
  const int N = 4, C = 8, V = 16;
  auto h = gpu_from<float>(randn(size_t(N) * C, 31)), w = gpu_from<float>(randn(size_t(V) * C, 32));
  auto dw = gpu_from<float>(std::vector<float>(size_t(V) * C, 0.0f));
  auto t = test::to_gpu(std::vector<int>{1, 16, -1, 3});
  auto loss = test::poisoned<float>(N);
  auto dh = test::poisoned<float>(int64_t(N) * C);
  lm_head_cross_entropy<float>(loss.data(), dh.data(), dw.data(), h.data(), w.data(), t.data(), N,
                               C, V, 1.0f, streams().compute);
  auto l = floats_of(loss);
  EXPECT_TRUE(std::isfinite(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
  EXPECT_EQ(l[2], 0.0f);
  EXPECT_TRUE(std::isfinite(l[3]));
  for (float g : floats_of(dh)) EXPECT_TRUE(std::isfinite(g));
}

TEST(CudaCrossEntropy, RejectsDhWithoutDw) {
  KILN_REQUIRE_GPU();
  auto b = test::poisoned<float>(64);
  auto t = test::to_gpu(std::vector<int>{0, 1});
  EXPECT_THROW(lm_head_cross_entropy<float>(b.data(), b.data(), nullptr, b.data(), b.data(),
                                            t.data(), 2, 4, 4, 1.0f, streams().compute),
               Error);
}

}  // namespace
}  // namespace kiln::cuda

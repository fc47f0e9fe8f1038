// RMSNorm and LayerNorm on the GPU (k_norms.cu) against ops::ref (double accumulators), fp32 and
// bf16, odd shapes: C = 100 (bf16: the element path), 1000, 4099 (element path), 768; N = 37
// (several row chunks for the weight gradients), 1 and 3000. Outputs that are overwritten start
// as NaN; accumulating ones (dx, dw, db) start as random data to check +=.
//
// Tolerances: outputs in T as tol_out<T>(C) (bf16: one rounding); the fp32 statistics and the
// fp32 weight gradients as tol_f32 of their sum lengths, whatever T (the inputs are the same
// bf16-rounded values on both sides, only the fp32 summation order differs).
#include <gtest/gtest.h>

#include "kernel_test_util.h"
#include "kiln/core/error.h"
#include "kiln/ops/layer_norm.h"
#include "kiln/ops/rms_norm.h"

namespace kiln::test {
namespace {

struct Shape {
  int N, C;
};
const Shape kShapes[] = {{37, 100}, {37, 1000}, {37, 4099}, {1, 768}, {3000, 768}, {37, 3}};

template <typename T>
class Norms : public ::testing::Test {};
TYPED_TEST_SUITE(Norms, Dtypes);

TYPED_TEST(Norms, RmsNormForward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  for (Shape sh : kShapes) {
    SCOPED_TRACE(testing::Message() << "N " << sh.N << " C " << sh.C);
    const int N = sh.N, C = sh.C;
    auto x = round_to<T>(randn(size_t(N) * C, 1, 2.0f));
    auto w = randn(C, 2);
    std::vector<float> out(x.size()), rstd(N);
    ops::ref::rms_norm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);

    auto dx = gpu_from<T>(x);
    auto dw = to_gpu(w);
    auto dout = poisoned<T>(int64_t(x.size()));
    auto drstd = poisoned<float>(N);
    cuda::rms_norm_forward<T>(dout.data(), drstd.data(), dx.data(), dw.data(), N, C, 1e-5f,
                              compute());
    expect_close(floats_of(dout), out, tol_out<T>(C), "out");
    expect_close(to_cpu(drstd), rstd, tol_f32(C), "rstd");
  }
}

TYPED_TEST(Norms, RmsNormBackward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  for (Shape sh : kShapes) {
    SCOPED_TRACE(testing::Message() << "N " << sh.N << " C " << sh.C);
    const int N = sh.N, C = sh.C;
    auto x = round_to<T>(randn(size_t(N) * C, 3, 2.0f));
    auto g = round_to<T>(randn(x.size(), 4));
    auto dx0 = round_to<T>(randn(x.size(), 5));  // dx accumulates
    auto w = randn(C, 6);
    auto dw0 = randn(C, 7);
    std::vector<float> out(x.size()), rstd(N);
    ops::ref::rms_norm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    std::vector<float> dx = dx0, dw = dw0;
    ops::ref::rms_norm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), N,
                                C);

    auto d_x = gpu_from<T>(x);
    auto d_g = gpu_from<T>(g);
    auto d_dx = gpu_from<T>(dx0);
    auto d_w = to_gpu(w);
    auto d_dw = to_gpu(dw0);
    auto d_rstd = to_gpu(rstd);
    cuda::rms_norm_backward<T>(d_dx.data(), d_dw.data(), d_g.data(), d_x.data(), d_w.data(),
                               d_rstd.data(), N, C, compute());
    expect_close(floats_of(d_dx), dx, tol_out<T>(C), "dx");
    const auto got_dw = to_cpu(d_dw);
    expect_close(got_dw, dw, tol_f32(N), "dw");

    // Deterministic: the same inputs give the same bits.
    set_gpu(d_dw, dw0);
    cuda::rms_norm_backward<T>(d_dx.data(), d_dw.data(), d_g.data(), d_x.data(), d_w.data(),
                               d_rstd.data(), N, C, compute());
    EXPECT_EQ(bits_of(to_cpu(d_dw)), bits_of(got_dw)) << "dw differs between two runs";
  }
}

TYPED_TEST(Norms, LayerNormForward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  for (Shape sh : kShapes) {
    SCOPED_TRACE(testing::Message() << "N " << sh.N << " C " << sh.C);
    const int N = sh.N, C = sh.C;
    auto x = randn(size_t(N) * C, 11, 2.0f);
    for (size_t i = 0; i < x.size(); ++i) x[i] += 3.0f;  // a mean far from 0
    x = round_to<T>(x);
    auto w = randn(C, 12), b = randn(C, 13);
    std::vector<float> out(x.size()), mean(N), rstd(N);
    ops::ref::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                                 N, C, 1e-5f);

    auto d_x = gpu_from<T>(x);
    auto d_w = to_gpu(w), d_b = to_gpu(b);
    auto d_out = poisoned<T>(int64_t(x.size()));
    auto d_mean = poisoned<float>(N), d_rstd = poisoned<float>(N);
    cuda::layer_norm_forward<T>(d_out.data(), d_mean.data(), d_rstd.data(), d_x.data(), d_w.data(),
                                d_b.data(), N, C, 1e-5f, compute());
    expect_close(floats_of(d_out), out, tol_out<T>(C), "out");
    expect_close(to_cpu(d_mean), mean, tol_f32(C), "mean");
    expect_close(to_cpu(d_rstd), rstd, tol_f32(C), "rstd");
  }
}

TYPED_TEST(Norms, LayerNormBackward) {
  KILN_REQUIRE_GPU();
  using T = TypeParam;
  for (Shape sh : kShapes) {
    SCOPED_TRACE(testing::Message() << "N " << sh.N << " C " << sh.C);
    const int N = sh.N, C = sh.C;
    auto x = round_to<T>(randn(size_t(N) * C, 21, 2.0f));
    auto g = round_to<T>(randn(x.size(), 22));
    auto dx0 = round_to<T>(randn(x.size(), 23));
    auto w = randn(C, 24), b = randn(C, 25);
    auto dw0 = randn(C, 26), db0 = randn(C, 27);
    std::vector<float> out(x.size()), mean(N), rstd(N);
    ops::ref::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(),
                                 N, C, 1e-5f);
    std::vector<float> dx = dx0, dw = dw0, db = db0;
    ops::ref::layer_norm_backward(dx.data(), dw.data(), db.data(), g.data(), x.data(), w.data(),
                                  mean.data(), rstd.data(), N, C);

    auto d_x = gpu_from<T>(x);
    auto d_g = gpu_from<T>(g);
    auto d_dx = gpu_from<T>(dx0);
    auto d_w = to_gpu(w);
    auto d_dw = to_gpu(dw0), d_db = to_gpu(db0);
    auto d_mean = to_gpu(mean), d_rstd = to_gpu(rstd);
    cuda::layer_norm_backward<T>(d_dx.data(), d_dw.data(), d_db.data(), d_g.data(), d_x.data(),
                                 d_w.data(), d_mean.data(), d_rstd.data(), N, C, compute());
    expect_close(floats_of(d_dx), dx, tol_out<T>(C), "dx");
    const auto got_dw = to_cpu(d_dw), got_db = to_cpu(d_db);
    expect_close(got_dw, dw, tol_f32(N), "dw");
    expect_close(got_db, db, tol_f32(N), "db");

    set_gpu(d_dw, dw0);
    set_gpu(d_db, db0);
    cuda::layer_norm_backward<T>(d_dx.data(), d_dw.data(), d_db.data(), d_g.data(), d_x.data(),
                                 d_w.data(), d_mean.data(), d_rstd.data(), N, C, compute());
    EXPECT_EQ(bits_of(to_cpu(d_dw)), bits_of(got_dw)) << "dw differs between two runs";
    EXPECT_EQ(bits_of(to_cpu(d_db)), bits_of(got_db)) << "db differs between two runs";
  }
}

// Runs without a GPU: bad shapes are refused on the host, before anything touches the device.
TEST(NormsHost, RejectsBadShapes) {
  EXPECT_THROW(
      cuda::rms_norm_forward<float>(nullptr, nullptr, nullptr, nullptr, 4, 0, 1e-5f, nullptr),
      Error);
  EXPECT_THROW(cuda::layer_norm_forward<cuda::bf16>(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                    nullptr, -1, 8, 1e-5f, nullptr),
               Error);
  EXPECT_THROW(cuda::layer_norm_backward<float>(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                nullptr, nullptr, nullptr, 4, 8, nullptr),
               Error);  // db is null
}

}  // namespace
}  // namespace kiln::test

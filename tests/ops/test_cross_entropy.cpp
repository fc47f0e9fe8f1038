// Fused LM head + cross-entropy: cpu (chunked sgemms) vs ref over odd shapes including chunk
// boundaries, ignored targets, zero weights, and both backwards vs central finite differences
// of a double-precision forward.
//
// Tolerances (normwise). A logit is a C-term dot product; the softmax sums V exponentials; dh
// sums V terms of dlogits * W; dW sums the N rows' contributions. Worst-case bounds ((C + V) kU
// and up) are loose enough to hide bugs, so we use the probabilistic ones: an n-term fp32 sum
// errs by ~sqrt(n) kU (Higham & Mary 2019). tol = 4 (sqrt(C) + sqrt(V) [+ sqrt(N) for dW] + 8) kU,
// the 8 for the roundings outside the sums (exp, log, the scaling by grad_scale / sum).
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/ops/cross_entropy.h"
#include "op_test_util.h"

namespace kiln::test {
namespace {

struct Shape {
  int N, C, V;
};

double tol_of(double C, double V, double N = 0) {
  return 4 * (std::sqrt(C) + std::sqrt(V) + std::sqrt(N) + 8) * kU;
}

struct Result {
  std::vector<float> losses, dh, dw;
};

template <typename F>
Result run(F f, const std::vector<float>& h, const std::vector<float>& w, const std::vector<int>& y,
           const std::vector<float>& dw0, const Shape& s, float scale) {
  Result r{std::vector<float>(s.N, NAN), std::vector<float>(int64_t(s.N) * s.C, NAN), dw0};
  f(r.losses.data(), r.dh.data(), r.dw.data(), h.data(), w.data(), y.data(), s.N, s.C, s.V, scale);
  return r;
}

// Targets with every fourth-ish one ignored (-1 or -100, as HF pads labels).
std::vector<int> targets(const Shape& s, uint64_t seed) {
  auto y = random_ids(s.N, s.V, seed);
  const auto r = random_ids(s.N, 4, seed + 1);
  for (int n = 0; n < s.N; ++n)
    if (r[n] == 0) y[n] = n % 2 ? -1 : -100;
  return y;
}

TEST(CrossEntropy, CpuMatchesRefAcrossChunkBoundaries) {
  // The cpu path takes 256-row chunks for these vocabularies: N = 255, 256, 257 and 600 put the
  // last chunk at every kind of boundary. V = 40000 shrinks the chunk to 52 rows (8 MB of
  // logits), so N = 110 is chunks of 52, 52 and 6.
  for (const Shape& s :
       {Shape{1, 8, 5}, Shape{7, 16, 33}, Shape{255, 32, 100}, Shape{256, 8, 17},
        Shape{257, 24, 97}, Shape{600, 16, 50}, Shape{70, 64, 2000}, Shape{110, 8, 40000}}) {
    SCOPED_TRACE(::testing::Message() << "N=" << s.N << " C=" << s.C << " V=" << s.V);
    const auto h = random_vector(int64_t(s.N) * s.C, 1);
    const auto w = random_vector(int64_t(s.V) * s.C, 2, -0.5f, 0.5f);
    const auto dw0 = random_vector(int64_t(s.V) * s.C, 3);  // dW accumulates onto this
    const auto y = targets(s, 4);
    const float scale = 1.0f / s.N;
    const Result ref = run(ops::ref::lm_head_cross_entropy, h, w, y, dw0, s, scale);
    const Result cpu = run(ops::cpu::lm_head_cross_entropy, h, w, y, dw0, s, scale);
    const double tol = tol_of(s.C, s.V), tol_dw = tol_of(s.C, s.V, s.N);
    EXPECT_TRUE(normwise_close(cpu.losses, ref.losses, tol));
    EXPECT_TRUE(normwise_close(cpu.dh, ref.dh, tol));
    // Compare the accumulated part, dW - dW0, at its own scale.
    std::vector<float> gc(dw0.size());
    std::vector<double> gr(dw0.size());
    for (size_t i = 0; i < dw0.size(); ++i) {
      gc[i] = cpu.dw[i] - dw0[i];
      gr[i] = double(ref.dw[i]) - dw0[i];
    }
    // Subtracting dW0 (|dW0| <= 1) costs up to 2 kU of absolute error.
    EXPECT_TRUE(all_close(gc, gr, 0, tol_dw * max_abs(gr) + 2 * kU));
    // Ignored rows: zero loss and zero gradient.
    for (int n = 0; n < s.N; ++n)
      if (y[n] < 0) {
        EXPECT_EQ(cpu.losses[n], 0.0f);
        for (int c = 0; c < s.C; ++c) ASSERT_EQ(cpu.dh[int64_t(n) * s.C + c], 0.0f);
      }
  }
}

TEST(CrossEntropy, ForwardOnlyGivesTheSameLosses) {
  const Shape s{300, 16, 70};
  const auto h = random_vector(int64_t(s.N) * s.C, 5);
  const auto w = random_vector(int64_t(s.V) * s.C, 6);
  const auto y = targets(s, 7);
  std::vector<float> l0(s.N), l1(s.N);
  ops::cpu::lm_head_cross_entropy(l0.data(), nullptr, nullptr, h.data(), w.data(), y.data(), s.N,
                                  s.C, s.V, 1.0f);
  const Result r =
      run(ops::cpu::lm_head_cross_entropy, h, w, y, std::vector<float>(s.V * s.C), s, 1.0f);
  EXPECT_TRUE(all_close(l0, r.losses, 0, 0));  // same arithmetic, bit for bit
  ops::ref::lm_head_cross_entropy(l1.data(), nullptr, nullptr, h.data(), w.data(), y.data(), s.N,
                                  s.C, s.V, 1.0f);
  EXPECT_TRUE(normwise_close(l0, l1, tol_of(s.C, s.V)));
}

TEST(CrossEntropy, AllIgnoredLeavesDwUntouched) {
  const Shape s{40, 8, 30};
  const auto h = random_vector(int64_t(s.N) * s.C, 8);
  const auto w = random_vector(int64_t(s.V) * s.C, 9);
  const auto dw0 = random_vector(int64_t(s.V) * s.C, 10);
  const std::vector<int> y(s.N, -100);
  for (auto f : {ops::ref::lm_head_cross_entropy, ops::cpu::lm_head_cross_entropy}) {
    const Result r = run(f, h, w, y, dw0, s, 1.0f);
    EXPECT_TRUE(bit_equal(r.dw, dw0));
    EXPECT_EQ(max_abs(r.losses), 0.0);
    EXPECT_EQ(max_abs(r.dh), 0.0);
  }
}

TEST(CrossEntropy, ZeroWeightsGiveLogV) {
  // All logits 0: uniform softmax, loss log(V); dh = dlogits W = 0; dW = (1/V - onehot)^T h.
  const Shape s{260, 8, 37};
  const auto h = random_vector(int64_t(s.N) * s.C, 11);
  const std::vector<float> w(int64_t(s.V) * s.C, 0.0f);
  const auto y = random_ids(s.N, s.V, 12);
  for (auto f : {ops::ref::lm_head_cross_entropy, ops::cpu::lm_head_cross_entropy}) {
    const Result r = run(f, h, w, y, std::vector<float>(w.size(), 0.0f), s, 1.0f);
    // A sum of V ones is exact and log() is good to 1 ulp.
    for (int n = 0; n < s.N; ++n)
      EXPECT_NEAR(r.losses[n], std::log(double(s.V)), 2 * kU * std::log(double(s.V)));
    EXPECT_EQ(max_abs(r.dh), 0.0);
    std::vector<double> dw(w.size(), 0.0);
    for (int n = 0; n < s.N; ++n)
      for (int v = 0; v < s.V; ++v)
        for (int c = 0; c < s.C; ++c) dw[v * s.C + c] += (1.0 / s.V - (v == y[n])) * h[n * s.C + c];
    EXPECT_TRUE(normwise_close(r.dw, dw, tol_of(s.C, s.V, s.N)));
  }
}

// L = grad_scale * sum of the (non-ignored) rows' losses, in double.
double loss_double(const std::vector<double>& h, const std::vector<double>& w,
                   const std::vector<int>& y, const Shape& s, double scale) {
  double L = 0.0;
  std::vector<double> z(s.V);
  for (int n = 0; n < s.N; ++n) {
    if (y[n] < 0) continue;
    double m = -INFINITY, sum = 0.0;
    for (int v = 0; v < s.V; ++v) {
      z[v] = 0.0;
      for (int c = 0; c < s.C; ++c) z[v] += h[n * s.C + c] * w[v * s.C + c];
      m = std::max(m, z[v]);
    }
    for (int v = 0; v < s.V; ++v) sum += std::exp(z[v] - m);
    L += scale * (m + std::log(sum) - z[y[n]]);
  }
  return L;
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const Shape s{6, 5, 7};
  const auto h = random_vector(int64_t(s.N) * s.C, 13, -2, 2);
  const auto w = random_vector(int64_t(s.V) * s.C, 14, -2, 2);
  std::vector<int> y = random_ids(s.N, s.V, 15);
  y[2] = -1;
  const float scale = 0.37f;
  auto hd = to_double(h), wd = to_double(w);
  const auto L = [&] { return loss_double(hd, wd, y, s, scale); };
  const auto dh_fd = fd_gradient(hd, L), dw_fd = fd_gradient(wd, L);
  for (auto f : {ops::ref::lm_head_cross_entropy, ops::cpu::lm_head_cross_entropy}) {
    const Result r = run(f, h, w, y, std::vector<float>(w.size(), 0.0f), s, scale);
    // The float backward's own error; FD in double is good to ~1e-9.
    EXPECT_TRUE(normwise_close(r.dh, dh_fd, tol_of(s.C, s.V) + 1e-8));
    EXPECT_TRUE(normwise_close(r.dw, dw_fd, tol_of(s.C, s.V, s.N) + 1e-8));
    // And the forward against the double loss.
    double total = 0.0;
    for (float l : r.losses) total += scale * l;
    EXPECT_NEAR(total, L(), tol_of(s.C, s.V, s.N) * std::fabs(L()));
  }
}

TEST(CrossEntropy, RejectsTargetOutsideVocabulary) {
  const Shape s{2, 4, 5};
  const auto h = random_vector(8, 16), w = random_vector(20, 17);
  const std::vector<int> y = {1, 5};
  std::vector<float> l(2);
  EXPECT_THROW(ops::cpu::lm_head_cross_entropy(l.data(), nullptr, nullptr, h.data(), w.data(),
                                               y.data(), s.N, s.C, s.V, 1.0f),
               Error);
}

// Vocabulary parallelism with the shards in threads, their row statistics combined at a barrier
// (in shard order, as a communicator would): the losses, the summed dh and the stacked dW are the
// whole vocabulary's, within the same tolerances. Shard sizes are uneven, and V = 40000 takes the
// chunked path (every shard must make the same reduce calls).
TEST(CrossEntropy, VocabularyShardsMatchTheWholeVocabulary) {
  for (const Shape& s : {Shape{7, 16, 33}, Shape{257, 24, 97}, Shape{110, 8, 40000}}) {
    for (int shards : {2, 3}) {
      SCOPED_TRACE(::testing::Message() << "N=" << s.N << " V=" << s.V << " shards=" << shards);
      const auto h = random_vector(int64_t(s.N) * s.C, 1);
      const auto w = random_vector(int64_t(s.V) * s.C, 2, -0.5f, 0.5f);
      const auto y = targets(s, 4);
      const float scale = 1.0f / s.N;
      std::vector<float> zero(w.size(), 0.0f);
      const Result want = run(ops::cpu::lm_head_cross_entropy, h, w, y, zero, s, scale);
      std::barrier meet(shards);
      std::vector<float*> bufs(shards);
      std::vector<Result> got(shards);
      std::vector<std::thread> threads;
      for (int k = 0, begin = 0; k < shards; ++k) {
        const int Vk = s.V / shards + (k < s.V % shards ? 1 : 0);
        threads.emplace_back([&, k, begin, Vk] {
          ops::VocabShard shard;
          shard.begin = begin;
          shard.total = s.V;
          shard.reduce = [&, k](float* x, int n, bool max) {
            bufs[k] = x;
            meet.arrive_and_wait();
            std::vector<float> out(bufs[0], bufs[0] + n);
            for (int j = 1; j < shards; ++j)
              for (int i = 0; i < n; ++i)
                out[i] = max ? std::max(out[i], bufs[j][i]) : out[i] + bufs[j][i];
            meet.arrive_and_wait();
            std::copy(out.begin(), out.end(), x);
          };
          Result& r = got[k];
          r = {std::vector<float>(s.N), std::vector<float>(int64_t(s.N) * s.C),
               std::vector<float>(int64_t(Vk) * s.C, 0.0f)};
          ops::cpu::lm_head_cross_entropy_shard(r.losses.data(), r.dh.data(), r.dw.data(), h.data(),
                                                w.data() + int64_t(begin) * s.C, y.data(), s.N, s.C,
                                                Vk, scale, shard);
        });
        begin += Vk;
      }
      for (auto& t : threads) t.join();
      std::vector<float> dh(want.dh.size(), 0.0f), dw;
      for (const Result& r : got) {
        EXPECT_TRUE(normwise_close(r.losses, to_double(want.losses), tol_of(s.C, s.V)));
        for (size_t i = 0; i < dh.size(); ++i) dh[i] += r.dh[i];
        dw.insert(dw.end(), r.dw.begin(), r.dw.end());
      }
      EXPECT_TRUE(normwise_close(dh, to_double(want.dh), tol_of(s.C, s.V)));
      EXPECT_TRUE(normwise_close(dw, to_double(want.dw), tol_of(s.C, s.V, s.N)));
    }
  }
}

}  // namespace
}  // namespace kiln::test

// Causal GQA attention: cpu (flash-style) vs ref over odd shapes, both backwards vs central
// finite differences of a double-precision forward, and thread-count determinism.
//
// Tolerance (normwise against the output's scale, see near()). An output is a softmax-weighted
// sum over up to T keys of scores that are D-term dot products; a gradient of a kv head also sums
// over its G = H/K query heads. The worst-case bound, (G*T + D^1.5 a^2) kU for inputs in [-a, a],
// is thousands of kU and would hide real bugs, so we use the probabilistic bound: rounding errors
// of an n-term sum behave like a random walk, ~sqrt(n) kU (Higham & Mary 2019), giving
// tol = 4 (sqrt(G*T) + sqrt(D) a^2 + 8) kU. The 8 covers the few roundings outside the sums
// (exp, the final division, online-softmax rescaling). Measured errors sit 5-10x below it.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/ops/attention.h"
#include "op_test_util.h"

namespace kiln::test {
namespace {

struct Shape {
  int B, T, H, K, D;
};

double tolerance(const Shape& s, double amp) {
  const int G = s.H / s.K;
  return 4.0 * (std::sqrt(double(G) * s.T) + std::sqrt(double(s.D)) * amp * amp + 8) * kU;
}

// The q, k or v part (0, 1, 2) of a packed (B,T,(H+2K)*D) tensor, as a flat vector.
template <typename F>
std::vector<F> part(const std::vector<F>& x, const Shape& s, int which) {
  const int W = (s.H + 2 * s.K) * s.D;
  const int off = which == 0 ? 0 : which == 1 ? s.H * s.D : (s.H + s.K) * s.D;
  const int len = (which == 0 ? s.H : s.K) * s.D;
  std::vector<F> r;
  for (int n = 0; n < s.B * s.T; ++n)
    r.insert(r.end(), x.begin() + int64_t(n) * W + off, x.begin() + int64_t(n) * W + off + len);
  return r;
}

// Naive causal attention in double: the finite-difference oracle.
std::vector<double> attention_double(const std::vector<double>& qkv, const Shape& s) {
  const int W = (s.H + 2 * s.K) * s.D, G = s.H / s.K;
  const double scale = 1.0 / std::sqrt(double(s.D));
  std::vector<double> out(int64_t(s.B) * s.T * s.H * s.D, 0.0), p(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.T; ++i) {
        const double* q = &qkv[(int64_t(b) * s.T + i) * W + h * s.D];
        double m = -INFINITY, l = 0.0;
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[(int64_t(b) * s.T + j) * W + (s.H + h / G) * s.D];
          double dot = 0.0;
          for (int d = 0; d < s.D; ++d) dot += q[d] * k[d];
          p[j] = dot * scale;
          m = std::max(m, p[j]);
        }
        for (int j = 0; j <= i; ++j) l += (p[j] = std::exp(p[j] - m));
        double* o = &out[((int64_t(b) * s.T + i) * s.H + h) * s.D];
        for (int j = 0; j <= i; ++j) {
          const double* v = &qkv[(int64_t(b) * s.T + j) * W + (s.H + s.K + h / G) * s.D];
          for (int d = 0; d < s.D; ++d) o[d] += p[j] / l * v[d];
        }
      }
  return out;
}

struct Result {
  std::vector<float> out, lse, dqkv;
};

template <typename Fwd, typename Bwd>
Result run(Fwd fwd, Bwd bwd, const std::vector<float>& qkv, const std::vector<float>& dout,
           const Shape& s) {
  Result r;
  r.out.assign(int64_t(s.B) * s.T * s.H * s.D, NAN);
  r.lse.assign(int64_t(s.B) * s.H * s.T, NAN);
  r.dqkv.assign(qkv.size(), NAN);  // NaN-filled: the backward must overwrite every element
  fwd(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.H, s.K, s.D);
  bwd(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B, s.T, s.H, s.K, s.D);
  return r;
}
Result run_ref(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s) {
  return run([](auto... a) { ops::ref::attention_forward(a...); },
             [](auto... a) { ops::ref::attention_backward(a...); }, qkv, dout, s);
}
Result run_cpu(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s) {
  return run([](auto... a) { ops::cpu::attention_forward(a...); },
             [](auto... a) { ops::cpu::attention_backward(a...); }, qkv, dout, s);
}

// Normwise with a floor of 1: inputs and dout are O(1), so O(1) is the natural scale of every
// output and gradient, and an exactly-zero expected gradient (dq, dk at T = 1) is compared
// against rounding noise of that scale rather than against zero.
template <typename E>
::testing::AssertionResult near(const std::vector<float>& a, const std::vector<E>& e, double tol) {
  return all_close(a, e, 0.0, tol * std::max(max_abs(e), 1.0));
}

int64_t qkv_size(const Shape& s) {
  return int64_t(s.B) * s.T * (s.H + 2 * s.K) * s.D;
}
int64_t out_size(const Shape& s) {
  return int64_t(s.B) * s.T * s.H * s.D;
}

void expect_cpu_matches_ref(const Shape& s, float amp, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "B=" << s.B << " T=" << s.T << " H=" << s.H << " K=" << s.K
                                    << " D=" << s.D << " amp=" << amp);
  const auto qkv = random_vector(qkv_size(s), seed, -amp, amp);
  const auto dout = random_vector(out_size(s), seed + 1);
  const Result ref = run_ref(qkv, dout, s), cpu = run_cpu(qkv, dout, s);
  const double tol = tolerance(s, amp);
  EXPECT_TRUE(near(cpu.out, ref.out, tol));
  EXPECT_TRUE(near(cpu.lse, ref.lse, tol));
  for (int which = 0; which < 3; ++which) {
    SCOPED_TRACE(which == 0 ? "dq" : which == 1 ? "dk" : "dv");
    EXPECT_TRUE(near(part(cpu.dqkv, s, which), part(ref.dqkv, s, which), tol));
  }
}

TEST(Attention, CpuMatchesRefOverOddShapes) {
  uint64_t seed = 100;
  for (int T : {1, 7, 13, 64, 100, 257})
    for (int D : {8, 32, 64})
      for (auto [H, K] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{6, 1}})
        for (int B : {1, 3}) expect_cpu_matches_ref({B, T, H, K, D}, 1.0f, seed += 2);
}

TEST(Attention, CpuMatchesRefWithPeakedSoftmax) {
  // Inputs in [-4, 4]: scores up to ~16 sqrt(D), so the running max changes often and the
  // rescaling of the online softmax is exercised hard.
  expect_cpu_matches_ref({2, 130, 4, 2, 32}, 4.0f, 7);
  expect_cpu_matches_ref({1, 257, 2, 1, 64}, 4.0f, 9);
}

TEST(Attention, TypicalTrainingShape) {
  expect_cpu_matches_ref({2, 256, 8, 4, 32}, 1.0f, 11);
  expect_cpu_matches_ref({1, 256, 4, 2, 128}, 1.0f, 13);
  // Longer than any tile by far: many key blocks per query tile, many tiles per task.
  expect_cpu_matches_ref({1, 1030, 2, 1, 16}, 1.0f, 15);
}

// Both backwards against d/dqkv of L = sum(out * g), by central differences in double.
TEST(Attention, BackwardMatchesFiniteDifferences) {
  for (const Shape& s : {Shape{2, 7, 4, 2, 8}, Shape{1, 13, 6, 1, 8}, Shape{1, 21, 2, 2, 16},
                         Shape{1, 1, 4, 4, 8}}) {
    SCOPED_TRACE(::testing::Message()
                 << "B=" << s.B << " T=" << s.T << " H=" << s.H << " K=" << s.K << " D=" << s.D);
    const auto qkv = random_vector(qkv_size(s), 21);
    const auto g = random_vector(out_size(s), 22);
    auto qkv_d = to_double(qkv);
    const auto fd = fd_gradient(qkv_d, [&] { return dot(attention_double(qkv_d, s), g); });
    // The float backward's own error dominates (FD in double is good to ~1e-9).
    const double tol = tolerance(s, 1.0);
    for (const Result& r : {run_ref(qkv, g, s), run_cpu(qkv, g, s)})
      for (int which = 0; which < 3; ++which) {
        SCOPED_TRACE(which == 0 ? "dq" : which == 1 ? "dk" : "dv");
        EXPECT_TRUE(near(part(r.dqkv, s, which), part(fd, s, which), tol));
      }
    // The forward against the double oracle too, so the ref is checked, not just trusted.
    EXPECT_TRUE(near(run_ref(qkv, g, s).out, attention_double(qkv_d, s), tol));
  }
}

TEST(Attention, FirstRowCopiesFirstValueAndLseIsItsScore) {
  // Query 0 sees only key 0: out = v_0, lse = q_0 . k_0 / sqrt(D).
  const Shape s{1, 3, 2, 1, 8};
  const auto qkv = random_vector(qkv_size(s), 5);
  const Result r = run_cpu(qkv, random_vector(out_size(s), 6), s);
  for (int h = 0; h < s.H; ++h) {
    double dot = 0.0;
    for (int d = 0; d < s.D; ++d) {
      EXPECT_FLOAT_EQ(r.out[h * s.D + d], qkv[(s.H + s.K) * s.D + d]);
      dot += double(qkv[h * s.D + d]) * qkv[s.H * s.D + d];
    }
    EXPECT_NEAR(r.lse[h * s.T], dot / std::sqrt(double(s.D)), 1e-6);
  }
}

TEST(Attention, DeterministicAcrossThreadCounts) {
  const Shape s{3, 100, 8, 2, 32};
  const auto qkv = random_vector(qkv_size(s), 31);
  const auto dout = random_vector(out_size(s), 32);
  Result one, two;
  {
    ThreadCount t(1);
    one = run_cpu(qkv, dout, s);
  }
  {
    ThreadCount t(2);
    two = run_cpu(qkv, dout, s);
  }
  EXPECT_TRUE(bit_equal(one.out, two.out));
  EXPECT_TRUE(bit_equal(one.lse, two.lse));
  EXPECT_TRUE(bit_equal(one.dqkv, two.dqkv));
}

// Packed rows (pos): positions restarting at 0 where a sequence starts, sequences of every
// length from 1 up across tile edges. Oracle 1: ref over the packed row equals ref over each
// sequence alone (block-diagonal causal attention computes what the sequences would alone).
// Oracle 2: cpu equals ref, forward and backward, with the odd-shape test's tolerance.
std::vector<int> packed_positions(int B, int T, uint64_t seed) {
  Rng rng(seed);
  std::vector<int> pos(size_t(B) * T);
  for (int b = 0; b < B; ++b)
    for (int t = 0, p = 0, left = 0; t < T; ++t, --left) {
      if (left == 0) left = 1 + int(rng.below(b % 2 ? 70 : 20)), p = 0;  // short and long
      pos[size_t(b) * T + t] = p++;
    }
  return pos;
}

TEST(Attention, PackedRowsEqualTheirSequencesAloneAndCpuMatchesRef) {
  for (auto [B, T, H, K, D] : {std::array{2, 150, 4, 2, 16}, std::array{3, 67, 6, 1, 32}}) {
    const Shape s{B, T, H, K, D};
    SCOPED_TRACE(::testing::Message() << "B=" << B << " T=" << T);
    const auto qkv = random_vector(qkv_size(s), 7, -2.0f, 2.0f);
    const auto dout = random_vector(out_size(s), 8);
    const std::vector<int> pos = packed_positions(B, T, 9);
    auto packed = [&](auto fwd, auto bwd) {
      return run(
          [&](float* o, float* l, const float* q, int b, int t, int h, int k, int d) {
            fwd(o, l, q, b, t, h, k, d, pos.data());
          },
          [&](float* g, const float* dO, const float* q, const float* o, const float* l, int b,
              int t, int h, int k, int d) { bwd(g, dO, q, o, l, b, t, h, k, d, pos.data()); },
          qkv, dout, s);
    };
    const Result ref = packed(ops::ref::attention_forward, ops::ref::attention_backward);
    const Result cpu = packed(ops::cpu::attention_forward, ops::cpu::attention_backward);
    const double tol = tolerance(s, 2.0f);
    EXPECT_TRUE(near(cpu.out, ref.out, tol));
    EXPECT_TRUE(near(cpu.lse, ref.lse, tol));
    EXPECT_TRUE(near(cpu.dqkv, ref.dqkv, tol));
    // Each sequence alone (B = 1, T = its length) gives the packed rows' values.
    const int64_t W = int64_t(H + 2 * K) * D, O = int64_t(H) * D;
    int sequences = 0;
    for (int b = 0; b < B; ++b)
      for (int t0 = 0; t0 < T;) {
        int n = 1;
        while (t0 + n < T && pos[size_t(b) * T + t0 + n] != 0) ++n;
        const Shape one{1, n, H, K, D};
        const size_t row = size_t(b) * T + t0;
        std::vector<float> q(qkv.begin() + row * W, qkv.begin() + (row + n) * W);
        std::vector<float> g(dout.begin() + row * O, dout.begin() + (row + n) * O);
        const Result alone = run_ref(q, g, one);
        for (int64_t i = 0; i < n * O; ++i)
          ASSERT_NEAR(ref.out[row * O + i], alone.out[i], 1e-6) << "b " << b << " t0 " << t0;
        for (int64_t i = 0; i < n * W; ++i)
          ASSERT_NEAR(ref.dqkv[row * W + i], alone.dqkv[i], 1e-6) << "b " << b << " t0 " << t0;
        for (int h = 0; h < H; ++h)
          for (int i = 0; i < n; ++i)
            ASSERT_NEAR(ref.lse[(size_t(b) * H + h) * T + t0 + i], alone.lse[size_t(h) * n + i],
                        1e-6);
        t0 += n;
        ++sequences;
      }
    EXPECT_GT(sequences, 2 * B);
  }
}

TEST(Attention, RejectsPositionsThatDoNotCountUp) {
  const Shape s{1, 4, 2, 2, 8};
  const auto qkv = random_vector(qkv_size(s), 1);
  std::vector<float> out(out_size(s)), lse(8);
  const int bad[] = {0, 1, 3, 4};
  EXPECT_THROW(ops::cpu::attention_forward(out.data(), lse.data(), qkv.data(), 1, 4, 2, 2, 8, bad),
               Error);
  EXPECT_THROW(ops::ref::attention_forward(out.data(), lse.data(), qkv.data(), 1, 4, 2, 2, 8, bad),
               Error);
}

TEST(Attention, RejectsHeadsNotDivisibleByKvHeads) {
  std::vector<float> out(64), lse(8), qkv(1024);
  EXPECT_THROW(ops::cpu::attention_forward(out.data(), lse.data(), qkv.data(), 1, 1, 3, 2, 8),
               Error);
}

}  // namespace
}  // namespace kiln::test

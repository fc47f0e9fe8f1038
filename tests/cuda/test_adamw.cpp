// The fused multi-tensor AdamW (k_adamw.cu) against ops::ref::adamw_step run segment by segment
// on the host, with grad pre-multiplied by grad_mul there. Segments of odd lengths, one longer
// than a block's chunk, mixed decay, and a gap that must be left alone. The bf16 copy must be
// kiln::f32_to_bf16 of the updated fp32 parameters, bit for bit.
//
// Tolerance: tol_f32(1). The kernel does torch's fp32 operations one by one without FMAs, so it
// is the reference's bits unless the host compiler contracted the reference into FMAs.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernel_test_util.h"
#include "kiln/core/error.h"
#include "kiln/ops/adamw.h"

namespace kiln::test {
namespace {

const std::vector<cuda::AdamWSegment> kSegments = {
    {0, 5, 1}, {5, 4097, 0}, {4102, 1, 1}, {4110, 9000, 1}, {13110, 33, 0}};
constexpr int64_t kTotal = 13143;

void host_step(std::vector<float>& p, const std::vector<float>& grad, std::vector<float>& m,
               std::vector<float>& v, ops::AdamWParams hp, float grad_mul) {
  for (const auto& s : kSegments) {
    std::vector<float> g(grad.begin() + s.offset, grad.begin() + s.offset + s.n);
    for (float& x : g) x *= grad_mul;
    ops::AdamWParams sp = hp;
    if (!s.decay) sp.weight_decay = 0.0f;
    ops::ref::adamw_step(p.data() + s.offset, g.data(), m.data() + s.offset, v.data() + s.offset,
                         s.n, sp);
  }
}

TEST(AdamW, SegmentsMatchReference) {
  KILN_REQUIRE_GPU();
  auto s = compute();
  cuda::AdamWSegments segs(kSegments.data(), int(kSegments.size()), s);
  ASSERT_EQ(segs.total(), kTotal);
  ASSERT_EQ(segs.count(), 5);

  auto p = randn(kTotal, 1), grad = randn(kTotal, 2), m = randn(kTotal, 3, 0.1f);
  auto v = randn(kTotal, 4, 0.01f);
  for (float& x : v) x = x * x;  // second moments are >= 0
  auto d_p = to_gpu(p), d_g = to_gpu(grad), d_m = to_gpu(m), d_v = to_gpu(v);
  auto d_p16 = poisoned<cuda::bf16>(kTotal);

  ops::AdamWParams hp;
  hp.lr = 3e-3f, hp.weight_decay = 0.1f, hp.step = 3;
  const std::vector<float> p0 = p;
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << hp.step);
    const float grad_mul = step == 0 ? 0.5f : 1.0f;
    // The second step writes no bf16 copy: the first step's must stay as it was.
    cuda::adamw_step(d_p.data(), d_g.data(), d_m.data(), d_v.data(), segs, hp, grad_mul,
                     step == 0 ? d_p16.data() : nullptr, s);
    host_step(p, grad, m, v, hp, grad_mul);
    const auto got_p = to_cpu(d_p);
    expect_close(got_p, p, tol_f32(1), "param");
    expect_close(to_cpu(d_m), m, tol_f32(1), "m");
    expect_close(to_cpu(d_v), v, tol_f32(1), "v");
    for (int64_t i = 4103; i < 4110; ++i)  // the gap
      ASSERT_EQ(got_p[size_t(i)], p0[size_t(i)]) << "element " << i << " outside the segments";
    if (step == 0) {
      std::vector<uint16_t> p16(kTotal);
      cuda::to_host(p16.data(), d_p16.data(), p16.size() * 2, s);
      for (int64_t i = 0; i < kTotal; ++i) {
        const bool gap = i >= 4103 && i < 4110;
        ASSERT_EQ(p16[size_t(i)], gap ? uint16_t(0xFFFF) : f32_to_bf16(got_p[size_t(i)]))
            << "bf16 copy at " << i;
      }
    }
    hp.step++;
  }
}

// Runs without a GPU: the table is checked (and, empty, built) on the host.
TEST(AdamWHost, SegmentsAreChecked) {
  cuda::AdamWSegments none(nullptr, 0, nullptr);
  EXPECT_EQ(none.count(), 0);
  EXPECT_EQ(none.chunks(), 0);
  EXPECT_EQ(none.total(), 0);
  const cuda::AdamWSegment overlap[] = {{0, 10, 1}, {5, 10, 0}};
  EXPECT_THROW(cuda::AdamWSegments(overlap, 2, nullptr), Error);
  const cuda::AdamWSegment bad_decay[] = {{0, 10, 2}};
  EXPECT_THROW(cuda::AdamWSegments(bad_decay, 1, nullptr), Error);
  const cuda::AdamWSegment negative[] = {{0, -1, 1}};
  EXPECT_THROW(cuda::AdamWSegments(negative, 1, nullptr), Error);
  // An empty table makes a step a no-op (nothing launched).
  ops::AdamWParams hp;
  hp.lr = 1e-3f;
  EXPECT_NO_THROW(
      cuda::adamw_step(nullptr, nullptr, nullptr, nullptr, none, hp, 1.0f, nullptr, nullptr));
}

}  // namespace
}  // namespace kiln::test

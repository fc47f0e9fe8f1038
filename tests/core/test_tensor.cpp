#include "kiln/core/tensor.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/core/rng.h"

namespace kiln {

TEST(Tensor, ZerosAlignedAndSized) {
  Tensor t = Tensor::zeros({3, 5});
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(t.f32()[i], 0.0f);
}

TEST(Tensor, ReshapeChecksCount) {
  Tensor t = Tensor::zeros({4, 6});
  EXPECT_EQ(t.reshape({2, 12}).dim(1), 12);
  EXPECT_THROW(t.reshape({5, 5}), Error);
}

TEST(Tensor, BlockFormatBytes) {
  Tensor t = Tensor::empty({2, 64}, DType::q8_0);
  EXPECT_EQ(t.nbytes(), 4u * 34u);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripsAllHalves) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
}

TEST(DType, NamesRoundTrip) {
  EXPECT_EQ(dtype_from_name("bf16"), DType::bf16);
  EXPECT_THROW(dtype_from_name("F128"), Error);
}

TEST(Error, NamesTheOperation) {
  try {
    fail("rms_norm", "C must be positive, got ", -3);
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[rms_norm] C must be positive, got -3");
  }
}

TEST(Rng, DeterministicAndUniform) {
  Rng a(42), b(42);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    float x = a.uniform();
    ASSERT_EQ(x, b.uniform());
    ASSERT_GE(x, 0.0f);
    ASSERT_LT(x, 1.0f);
    sum += x;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

TEST(Parallel, CoversEveryIndexOnce) {
  std::vector<int> hits(1000, 0);
  parallel_for(1000, [&](int64_t i) { hits[i]++; });
  for (int h : hits) EXPECT_EQ(h, 1);
  std::vector<int> hits2(37, 0);
  parallel_ranges(37, 4, [&](int64_t b, int64_t e) {
    for (auto i = b; i < e; ++i) hits2[i]++;
  });
  for (int h : hits2) EXPECT_EQ(h, 1);
}

}  // namespace kiln

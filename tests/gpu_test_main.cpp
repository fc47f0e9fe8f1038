// main() of the GPU test executables (tests/cuda, tests/gpu). Without a GPU their GPU cases
// GTEST_SKIP; the executable then exits 77, which ctest reports as skipped (SKIP_RETURN_CODE),
// but only when nothing failed: a failure of a CPU-side case (argument checks, host helpers)
// in the same executable still fails the test. With a GPU the exit status is gtest's.
#include <gtest/gtest.h>

#include "kiln/cuda/runtime.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  if (rc != 0) return rc;
  const bool skipped = testing::UnitTest::GetInstance()->skipped_test_count() > 0;
  return skipped && !kiln::cuda::available() ? 77 : 0;
}

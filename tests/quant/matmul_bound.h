// The error bound of quant::cpu::matmul against ref::matmul (qtensor.h): rounding x to 8 bits
// per block of 32 with d_x = absmax / 127 moves y[n, r] by at most
// sum_b (d_x[b] / 2) * sum_{k in b} |w_k|. Shared by the quant tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace kiln::quant::test {

// The bound for y[n, r] of x (N, cols) @ wd (rows, cols)^T; *mag gets sum_k |x_k w_k| (for the
// fp32-summation term the callers add).
inline double activation_rounding_bound(const std::vector<float>& x, const std::vector<float>& wd,
                                        int n, int r, int cols, double* mag) {
  double bound = 0;
  *mag = 0;
  for (int b = 0; b < cols / 32; ++b) {
    float amax = 0;
    double wabs = 0;
    for (int j = 0; j < 32; ++j) {
      const size_t k = size_t(b) * 32 + j;
      amax = std::max(amax, std::fabs(x[size_t(n) * cols + k]));
      wabs += std::fabs(wd[size_t(r) * cols + k]);
      *mag += std::fabs(x[size_t(n) * cols + k] * wd[size_t(r) * cols + k]);
    }
    bound += 0.5 * (amax / 127.0) * wabs;
  }
  return bound;
}

}  // namespace kiln::quant::test

// Vector helpers: memory-bound loops split across the pool.
#include "kiln/ops/elementwise.h"

#include <algorithm>
#include <vector>

#include "kiln/core/parallel.h"

namespace kiln::ops::cpu {

namespace {
// Below this many elements a loop is cheaper than waking the pool.
constexpr int64_t kGrain = 1 << 15;

// Reductions live in plain functions of raw pointers: inlined into a parallel lambda, GCC 12
// vectorizes `omp simd reduction` loops with gathers (several times slower).
double sum_squares_range(const float* x, int64_t lo, int64_t hi) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = lo; i < hi; ++i) acc += double(x[i]) * double(x[i]);
  return acc;
}
}  // namespace

void add(float* out, const float* a, const float* b, int64_t n) {
  parallel_ranges(n, kGrain, [=](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) out[i] = a[i] + b[i];
  });
}

void scale(float* x, float s, int64_t n) {
  parallel_ranges(n, kGrain, [=](int64_t lo, int64_t hi) {
#pragma omp simd
    for (int64_t i = lo; i < hi; ++i) x[i] *= s;
  });
}

double sum_squares(const float* x, int64_t n) {
  // Fixed-size chunks (not per-thread ranges), each summed by the same vector code and the
  // partials added in chunk order: the result depends on n alone, never on the thread count.
  // Each square of a float is exact in double, so only the additions round (error ~ n 2^-53).
  const int64_t chunks = (n + kGrain - 1) / kGrain;
  if (chunks == 0) return 0.0;
  std::vector<double> partial(chunks);
  double* partial_sums = partial.data();
  auto chunk_sum = [=](int64_t k) {
    partial_sums[k] = sum_squares_range(x, k * kGrain, std::min(n, (k + 1) * kGrain));
  };
  if (chunks == 1)
    chunk_sum(0);
  else
    parallel_for(chunks, chunk_sum);
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace kiln::ops::cpu

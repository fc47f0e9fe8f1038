// The one thread pool every CPU op uses: OpenMP's, shared with OpenBLAS (linked against its
// OpenMP build) so GEMMs and kiln's own kernels run on the same threads and never oversubscribe.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln {

// Threads used by CPU ops. Default: the machine's cores (or OMP_NUM_THREADS / KILN_THREADS).
int num_threads();
// Sets the thread count for kiln's kernels and for OpenBLAS alike. n <= 0 means all cores.
void set_num_threads(int n);

// Calls f(i) for i in [0, n) across the pool; static schedule, so the split is deterministic.
template <typename F>
void parallel_for(int64_t n, F&& f) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Calls f(begin, end) over contiguous ranges of [0, n), at least `grain` items each, one range
// per thread at most. For loops whose per-item work is tiny.
template <typename F>
void parallel_ranges(int64_t n, int64_t grain, F&& f) {
  int64_t parts =
      std::max<int64_t>(1, std::min<int64_t>(num_threads(), n / std::max<int64_t>(grain, 1)));
  if (parts <= 1) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(int(parts))
  for (int64_t p = 0; p < parts; ++p) {
    int64_t b = n * p / parts, e = n * (p + 1) / parts;
    if (b < e) f(b, e);
  }
}

}  // namespace kiln

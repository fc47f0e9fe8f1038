#include "kiln/core/parallel.h"

#include <omp.h>

#include <cstdlib>
#include <thread>

extern "C" void openblas_set_num_threads(int num_threads);

namespace kiln {

namespace {
int default_threads() {
  for (const char* var : {"KILN_THREADS", "OMP_NUM_THREADS"})
    if (const char* s = std::getenv(var); s && std::atoi(s) > 0) return std::atoi(s);
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}
int g_threads = 0;
}  // namespace

int num_threads() {
  if (g_threads == 0) set_num_threads(0);
  return g_threads;
}

void set_num_threads(int n) {
  g_threads = n > 0 ? n : default_threads();
  omp_set_num_threads(g_threads);
  openblas_set_num_threads(g_threads);
}

}  // namespace kiln

#include "kiln/cli/launch.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "kiln/core/error.h"
#ifdef KILN_HAVE_MPI
#include "kiln/dist/mpi_comm.h"
#endif

namespace kiln::cli {

int launched_world_size() {
  const char* world = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (!world) world = std::getenv("PMI_SIZE");
  return world ? std::max(1, std::atoi(world)) : 1;
}

void run_on_mpi_world(double timeout_s, const std::function<void(dist::Comm&)>& fn) {
#ifdef KILN_HAVE_MPI
  dist::MpiRuntime mpi(nullptr, nullptr);
  dist::MpiComm::set_timeout(timeout_s);
  auto comm = dist::MpiComm::world();
  try {
    fn(*comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: [rank %d] %s\n", comm->rank(), e.what());
    std::fflush(stderr);
    dist::MpiRuntime::abort(1);
  }
#else
  (void)timeout_s;
  (void)fn;
  fail("train", "launched on ", launched_world_size(), " ranks but this kiln was built without ",
       "MPI; run scripts/setup.sh (installs Open MPI) and rebuild");
#endif
}

}  // namespace kiln::cli

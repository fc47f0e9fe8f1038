#include "kiln/cli/mpi_world.h"

#include <cstdio>

#include "kiln/core/error.h"
#include "kiln/dist/launch.h"
#ifdef KILN_HAVE_MPI
#include "kiln/dist/mpi_comm.h"
#endif

namespace kiln::cli {

void run_on_mpi_world(double timeout_s, const std::function<void(dist::Comm&)>& fn) {
#ifdef KILN_HAVE_MPI
  dist::MpiRuntime mpi(nullptr, nullptr);
  dist::MpiComm::set_timeout(timeout_s);
  auto comm = dist::MpiComm::world();
  try {
    fn(*comm);
  } catch (const std::exception& e) {
    // The other ranks may be waiting in a collective this rank will never join: end the job.
    std::fprintf(stderr, "error: [rank %d] %s\n", comm->rank(), e.what());
    std::fflush(stderr);
    dist::MpiRuntime::abort(1);
  }
#else
  (void)timeout_s;
  (void)fn;
  fail("train", "launched on ", dist::launched_world_size(), " ranks but this kiln was built ",
       "without MPI; run scripts/setup.sh (installs Open MPI) and rebuild");
#endif
}

}  // namespace kiln::cli

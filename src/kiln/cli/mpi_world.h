// How a command that trains joins its ranks under mpirun/srun (dist::launched_world_size() > 1):
// MPI_COMM_WORLD, with the job ended when any rank fails. Shared by `kiln train` and
// `kiln bench train`.
#pragma once

#include <functional>

#include "kiln/dist/comm.h"

namespace kiln::cli {

// Calls fn(comm) on MPI_COMM_WORLD with every wait bounded by timeout_s
// (MpiComm::set_timeout). An exception on any rank is printed with the rank and ends the whole
// job, since the other ranks may be waiting in a collective this rank will never join. Fails
// naming the fix when this kiln was built without MPI.
void run_on_mpi_world(double timeout_s, const std::function<void(dist::Comm&)>& fn);

}  // namespace kiln::cli

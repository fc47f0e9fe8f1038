// How many ranks the process launcher started: mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE),
// a PMI launcher (PMI_SIZE), or Slurm's srun (SLURM_STEP_NUM_TASKS, set for each task of a job
// step; not inside a batch script itself, where SLURM_NTASKS is). 1 when started directly.
#pragma once

namespace kiln::dist {

int launched_world_size();

}  // namespace kiln::dist

// The launcher's rank count from its environment: mpirun, PMI launchers and srun, in that order.
#include <gtest/gtest.h>

#include <cstdlib>

#include "kiln/dist/launch.h"

namespace kiln::dist {
namespace {

TEST(Launch, ReadsTheLaunchersVariable) {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"})
    unsetenv(v);
  EXPECT_EQ(launched_world_size(), 1);
  setenv("SLURM_NTASKS", "8", 1);  // a batch script's allocation, not a launched step
  EXPECT_EQ(launched_world_size(), 1);
  setenv("SLURM_STEP_NUM_TASKS", "4", 1);  // srun -n 4
  EXPECT_EQ(launched_world_size(), 4);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);  // mpirun -np 2 (inside an allocation)
  EXPECT_EQ(launched_world_size(), 2);
}

}  // namespace
}  // namespace kiln::dist

// SingleComm: the one-process communicator every run uses without mpirun. The MPI backend is
// tested across processes in test_mpi_comm.cpp.
#include "kiln/dist/comm.h"

#include <gtest/gtest.h>

#include <vector>

#include "kiln/core/error.h"

using namespace kiln::dist;

TEST(SingleComm, CollectivesAreIdentityOrCopy) {
  SingleComm c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  std::vector<float> a{1, 2, 3}, out(3, 0);
  c.all_reduce(a.data(), 3);
  c.all_reduce(a.data(), 3, ReduceOp::max);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c.reduce_scatter(a.data(), out.data(), 3);
  EXPECT_EQ(out, a);
  std::fill(out.begin(), out.end(), 0.f);
  c.all_gather(a.data(), out.data(), 3);
  EXPECT_EQ(out, a);
  c.broadcast(a.data(), 3, 0);
  EXPECT_EQ(a, (std::vector<float>{1, 2, 3}));
  c.barrier();
  Request r = c.all_reduce_async(a.data(), 3);
  EXPECT_FALSE(r.pending());
  EXPECT_TRUE(r.test());  // a single process's collectives are done on return
  r.wait();
  r.wait();  // idempotent
  auto sub = c.split(3, 7);
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->rank(), 0);
}

TEST(SingleComm, BadArgumentsAreErrors) {
  SingleComm c;
  float x = 0;
  EXPECT_THROW(c.broadcast(&x, 1, 1), kiln::Error);
  EXPECT_THROW(c.send(&x, 1, 1, 0), kiln::Error);
  EXPECT_THROW(c.recv(&x, 1, 1, 0), kiln::Error);
  EXPECT_THROW(c.all_reduce(&x, -1), kiln::Error);
  EXPECT_THROW((void)c.split(-1, 0), kiln::Error);
}

namespace kiln::dist {
namespace {

// The wider collectives round-trip their values through the fp32 ones.
TEST(Comm, WideCollectivesKeepTheirValues) {
  SingleComm one;
  const uint64_t big = (uint64_t(1) << 62) + 12345;
  EXPECT_EQ(all_gather_exact(one, big), std::vector<uint64_t>{big});
  EXPECT_EQ(all_reduce_sum(one, 1.0 + 1e-12), 1.0 + 1e-12);
}

}  // namespace
}  // namespace kiln::dist

// NcclComm on one rank (one GPU: NCCL refuses two ranks on one device): every collective's
// result, split, and the error for a bad color. Multi-rank runs need one GPU per rank.
#include <gtest/gtest.h>

#include "cuda_test_util.h"
#include "kiln/cuda/nccl_comm.h"

namespace kiln::cuda {
namespace {

using test::to_cpu;
using test::to_gpu;

TEST(NcclComm, OneRankCollectives) {
  KILN_REQUIRE_GPU();
  dist::SingleComm boot;
  auto comm = NcclComm::create(boot, 0, 30);
  ASSERT_EQ(comm->size(), 1);
  ASSERT_EQ(comm->rank(), 0);
  std::vector<float> x = {1, -2, 3.5f, 4};
  auto d = to_gpu(x);
  comm->all_reduce(d.data(), 4);
  streams().comm.synchronize();
  EXPECT_EQ(to_cpu(d), x);
  comm->all_reduce(d.data(), 4, dist::ReduceOp::max);
  auto out = test::poisoned<float>(4);
  comm->all_gather(d.data(), out.data(), 4);
  EXPECT_EQ(to_cpu(out), x);
  auto rs = test::poisoned<float>(4);
  comm->reduce_scatter(d.data(), rs.data(), 4);
  EXPECT_EQ(to_cpu(rs), x);
  comm->broadcast(d.data(), 4, 0);
  EXPECT_EQ(to_cpu(d), x);
  comm->barrier();
  auto sub = comm->split(0, 0);
  EXPECT_EQ(sub->size(), 1);
  sub->all_reduce(d.data(), 4);
  EXPECT_EQ(to_cpu(d), x);
  EXPECT_THROW(comm->split(-1, 0), Error);
}

TEST(NcclComm, RequestsCompleteAndTest) {
  KILN_REQUIRE_GPU();
  dist::SingleComm boot;
  auto comm = NcclComm::create(boot, 0);
  auto d = to_gpu(std::vector<float>(1 << 20, 1.0f));
  dist::Request r = comm->all_reduce_async(d.data(), 1 << 20);
  r.wait();
  EXPECT_TRUE(r.test());
  EXPECT_EQ(to_cpu(d)[12345], 1.0f);
}

}  // namespace
}  // namespace kiln::cuda

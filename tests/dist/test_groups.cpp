// Process-group rank math against Megatron-Core's group lists (initialize_model_parallel, order
// "tp-cp-ep-dp-pp"), written out by hand; and make_groups over SingleComm.
#include "kiln/dist/groups.h"

#include <gtest/gtest.h>

#include <array>
#include <set>
#include <vector>

#include "kiln/core/error.h"

using namespace kiln::dist;
using Groups = std::vector<std::vector<int>>;

// The group containing `rank` from a list of groups.
static std::vector<int> group_of(const Groups& groups, int rank) {
  for (const auto& g : groups)
    for (int r : g)
      if (r == rank) return g;
  ADD_FAILURE() << "rank " << rank << " is in no group";
  return {};
}

// Every rank's plan matches the hand-written group lists, and coordinates invert world_rank().
static void expect_layout(int world, int tp, int pp, const Groups& tp_groups,
                          const Groups& dp_groups, const Groups& pp_groups) {
  for (int r = 0; r < world; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    GroupPlan g = plan_groups(world, tp, pp, r);
    EXPECT_EQ(g.dp, world / (tp * pp));
    EXPECT_EQ(g.tp_members, group_of(tp_groups, r));
    EXPECT_EQ(g.dp_members, group_of(dp_groups, r));
    EXPECT_EQ(g.pp_members, group_of(pp_groups, r));
    // Group rank = position in the member list.
    EXPECT_EQ(g.tp_members[g.tp_rank], r);
    EXPECT_EQ(g.dp_members[g.dp_rank], r);
    EXPECT_EQ(g.pp_members[g.pp_rank], r);
    EXPECT_EQ(world_rank(g, g.tp_rank, g.dp_rank, g.pp_rank), r);
  }
}

TEST(Groups, Tp2Pp2Dp2World8) {
  expect_layout(8, 2, 2, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}, {{0, 2}, {1, 3}, {4, 6}, {5, 7}},
                {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
}

// The example in Megatron-Core's initialize_model_parallel docstring: 16 GPUs, tp 2, pp 4, dp 2.
TEST(Groups, MegatronDocstringExample) {
  expect_layout(16, 2, 4, {{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}},
                {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {8, 10}, {9, 11}, {12, 14}, {13, 15}},
                {{0, 4, 8, 12}, {1, 5, 9, 13}, {2, 6, 10, 14}, {3, 7, 11, 15}});
}

TEST(Groups, PureDataParallel) {
  expect_layout(4, 1, 1, {{0}, {1}, {2}, {3}}, {{0, 1, 2, 3}}, {{0}, {1}, {2}, {3}});
}

TEST(Groups, PureTensorParallel) {
  expect_layout(4, 4, 1, {{0, 1, 2, 3}}, {{0}, {1}, {2}, {3}}, {{0}, {1}, {2}, {3}});
}

TEST(Groups, PurePipelineParallel) {
  expect_layout(4, 1, 4, {{0}, {1}, {2}, {3}}, {{0}, {1}, {2}, {3}}, {{0, 1, 2, 3}});
}

TEST(Groups, Tp2Dp3World6) {
  expect_layout(6, 2, 1, {{0, 1}, {2, 3}, {4, 5}}, {{0, 2, 4}, {1, 3, 5}},
                {{0}, {1}, {2}, {3}, {4}, {5}});
}

TEST(Groups, Tp4Pp2Dp1World8) {
  expect_layout(8, 4, 2, {{0, 1, 2, 3}, {4, 5, 6, 7}}, {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}},
                {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
}

// Each family of groups partitions the world: every rank in exactly one group of each kind.
TEST(Groups, GroupsPartitionTheWorld) {
  for (auto [world, tp, pp] : std::vector<std::array<int, 3>>{{8, 2, 2}, {24, 2, 3}, {12, 3, 2}}) {
    std::set<std::vector<int>> tps, dps, pps;
    for (int r = 0; r < world; ++r) {
      GroupPlan g = plan_groups(world, tp, pp, r);
      tps.insert(g.tp_members);
      dps.insert(g.dp_members);
      pps.insert(g.pp_members);
    }
    EXPECT_EQ(int(tps.size()), world / tp);
    EXPECT_EQ(int(pps.size()), world / pp);
    EXPECT_EQ(int(dps.size()), tp * pp);
  }
}

static void expect_error(int world, int tp, int pp, int rank, const std::string& needle) {
  try {
    plan_groups(world, tp, pp, rank);
    ADD_FAILURE() << "no error for world " << world << " tp " << tp << " pp " << pp;
  } catch (const kiln::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Groups, BadLayoutsAreErrors) {
  expect_error(6, 4, 1, 0, "not divisible by tp*pp = 4*1 = 4");
  expect_error(8, 3, 1, 0, "not divisible");
  expect_error(8, 2, 3, 0, "not divisible by tp*pp = 2*3 = 6");
  expect_error(8, 0, 1, 0, "parallel.tp must be >= 1");
  expect_error(8, 1, -1, 0, "parallel.pp must be >= 1");
  expect_error(8, 2, 2, 8, "rank 8 is out of range");
  expect_error(0, 1, 1, 0, "world size must be >= 1");
}

TEST(Groups, MakeGroupsOnSingleComm) {
  SingleComm world;
  ProcessGroups pg = make_groups(world, 1, 1);
  EXPECT_EQ(pg.tp->size(), 1);
  EXPECT_EQ(pg.dp->size(), 1);
  EXPECT_EQ(pg.pp->size(), 1);
  EXPECT_EQ(pg.plan.tp_members, std::vector<int>{0});
  EXPECT_THROW(make_groups(world, 2, 1), kiln::Error);
}

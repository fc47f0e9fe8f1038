#include "kiln/dist/groups.h"

#include "kiln/core/error.h"

namespace kiln::dist {

GroupPlan plan_groups(int world, int tp, int pp, int rank) {
  KILN_CHECK(world >= 1, "groups", "world size must be >= 1, got ", world);
  KILN_CHECK(tp >= 1, "groups", "parallel.tp must be >= 1, got ", tp);
  KILN_CHECK(pp >= 1, "groups", "parallel.pp must be >= 1, got ", pp);
  KILN_CHECK(world % (tp * pp) == 0, "groups", "world size ", world,
             " is not divisible by tp*pp = ", tp, "*", pp, " = ", tp * pp,
             ": launch a multiple of ", tp * pp, " processes or change parallel.tp / parallel.pp");
  KILN_CHECK(rank >= 0 && rank < world, "groups", "rank ", rank, " is out of range for world size ",
             world);
  GroupPlan g;
  g.world = world;
  g.tp = tp;
  g.pp = pp;
  g.dp = world / (tp * pp);
  g.rank = rank;
  g.tp_rank = rank % tp;
  g.dp_rank = (rank / tp) % g.dp;
  g.pp_rank = rank / (tp * g.dp);
  for (int t = 0; t < tp; ++t) g.tp_members.push_back(world_rank(g, t, g.dp_rank, g.pp_rank));
  for (int d = 0; d < g.dp; ++d) g.dp_members.push_back(world_rank(g, g.tp_rank, d, g.pp_rank));
  for (int p = 0; p < pp; ++p) g.pp_members.push_back(world_rank(g, g.tp_rank, g.dp_rank, p));
  return g;
}

// Split world so that ranks sharing `color` form a group ranked by `key`, and check the result
// against the plan (a mismatch means the backend's split broke its contract).
static std::unique_ptr<Comm> split_checked(Comm& world, int color, int key, int expect_size,
                                           const char* name) {
  auto c = world.split(color, key);
  KILN_CHECK(c->size() == expect_size && c->rank() == key, "groups", name, " group on rank ",
             world.rank(), " has size ", c->size(), " and rank ", c->rank(), ", expected ",
             expect_size, " and ", key, ": the communicator's split is broken");
  return c;
}

ProcessGroups make_groups(Comm& world, int tp, int pp) {
  ProcessGroups pg;
  pg.plan = plan_groups(world.size(), tp, pp, world.rank());
  const GroupPlan& g = pg.plan;
  // Colors number the groups; keys are the coordinate along the group, so group rank = coordinate.
  pg.tp = split_checked(world, g.dp_rank + g.dp * g.pp_rank, g.tp_rank, g.tp, "tensor-parallel");
  pg.dp = split_checked(world, g.tp_rank + g.tp * g.pp_rank, g.dp_rank, g.dp, "data-parallel");
  pg.pp = split_checked(world, g.tp_rank + g.tp * g.dp_rank, g.pp_rank, g.pp, "pipeline-parallel");
  return pg;
}

ExpertGroups make_expert_groups(Comm& dp, int ep) {
  KILN_CHECK(ep >= 1 && dp.size() % ep == 0, "parallel", "parallel.ep = ", ep,
             " must divide the data-parallel size ", dp.size(),
             " (world / (tp * pp)); run ep * k ranks or lower parallel.ep");
  ExpertGroups g;
  const int r = dp.rank();
  g.ep = split_checked(dp, r / ep, r % ep, ep, "expert-parallel");
  g.edp = split_checked(dp, r % ep, r / ep, dp.size() / ep, "expert-data-parallel");
  return g;
}

}  // namespace kiln::dist

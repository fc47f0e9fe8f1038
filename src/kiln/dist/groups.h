// Process groups for tensor (tp), pipeline (pp) and data (dp) parallelism, cut from the world in
// Megatron-Core's rank order (initialize_model_parallel, order "tp-cp-ep-dp-pp" with cp = ep = 1):
// tp varies fastest, then dp, then pp, so rank = tp_rank + tp·(dp_rank + dp·pp_rank).
// Example, world 8, tp 2, pp 2 (dp 2): tp groups [0,1] [2,3] [4,5] [6,7]; dp groups [0,2] [1,3]
// [4,6] [5,7]; pp groups [0,4] [1,5] [2,6] [3,7].
#pragma once

#include <memory>
#include <vector>

#include "kiln/dist/comm.h"

namespace kiln::dist {

// Where one rank sits in the layout, and the world ranks of its three groups (ascending, which is
// also the order of the group ranks: members[g] has group rank g).
struct GroupPlan {
  int world = 1, tp = 1, pp = 1, dp = 1;  // sizes; world = tp·pp·dp
  int rank = 0;                           // world rank
  int tp_rank = 0, pp_rank = 0, dp_rank = 0;
  std::vector<int> tp_members, pp_members, dp_members;
};

// The rank math alone (no communication). Throws kiln::Error naming the problem when tp or pp is
// not positive, tp·pp does not divide world, or rank is out of range.
GroupPlan plan_groups(int world, int tp, int pp, int rank);

// The world rank at the given coordinates (the inverse of plan_groups' rank decomposition).
inline int world_rank(const GroupPlan& g, int tp_rank, int dp_rank, int pp_rank) {
  return tp_rank + g.tp * (dp_rank + g.dp * pp_rank);
}

// The plan for world.rank() and its three sub-communicators. Collective over world: every rank
// calls it with the same tp and pp. Three Comm::split calls.
struct ProcessGroups {
  GroupPlan plan;
  std::unique_ptr<Comm> tp, pp, dp;
};
ProcessGroups make_groups(Comm& world, int tp, int pp);

// Expert parallelism inside data parallelism (Megatron-Core's expert-model-parallel groups): the
// dp group's consecutive runs of ep ranks share out the experts (ep, group rank = the part of the
// experts held), and the ranks holding the same part form the expert-data-parallel group (edp,
// dp/ep ranks) over which those experts' gradients are summed. Collective over dp. Throws naming
// the fix when ep does not divide dp.
struct ExpertGroups {
  std::unique_ptr<Comm> ep, edp;
};
ExpertGroups make_expert_groups(Comm& dp, int ep);

}  // namespace kiln::dist

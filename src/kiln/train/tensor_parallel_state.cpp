#include "kiln/train/tensor_parallel_state.h"

namespace kiln {

void scatter_training_state(const TensorParallelMap& map, const Model& full, AdamW& full_opt,
                            Model& shard, AdamW& opt) {
  map.scatter(full.weights().f32(), shard.weights().f32());
  map.scatter(full_opt.m().f32(), opt.m().f32());
  map.scatter(full_opt.v().f32(), opt.v().f32());
  opt.set_steps(full_opt.steps());
}

void gather_training_state(const TensorParallelMap& map, dist::Comm& tp, const Model& shard,
                           AdamW& opt, Model* full, AdamW* full_opt) {
  const bool root = tp.rank() == 0;
  map.gather_to_root(tp, shard.weights().f32(), root ? full->weights().f32() : nullptr);
  map.gather_to_root(tp, opt.m().f32(), root ? full_opt->m().f32() : nullptr);
  map.gather_to_root(tp, opt.v().f32(), root ? full_opt->v().f32() : nullptr);
  if (root) full_opt->set_steps(opt.steps());
}

}  // namespace kiln

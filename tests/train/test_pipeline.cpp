// Pipeline schedules as pure functions: the known GPipe and 1F1B orders, the number of
// micro-batches each stage keeps in flight (GPipe: all; 1F1B: stages - stage), and that every
// schedule can run: played out over all stages with blocking receives, no stage ever waits on a
// message that is never sent. (The schedules running for real are tests/cli/test_train_pp.cpp.)
#include <gtest/gtest.h>

#include <string>

#include "kiln/train/pipeline.h"

namespace kiln {
namespace {

std::string show(const std::vector<PipeOp>& ops) {
  std::string s;
  for (const PipeOp& op : ops) {
    s += op.kind == PipeOp::forward ? 'F' : 'B';
    s += std::to_string(op.micro) + ' ';
  }
  return s;
}

TEST(PipelineSchedule, KnownOrders) {
  EXPECT_EQ(show(pipeline_schedule(PipeSchedule::gpipe, 2, 0, 3)), "F0 F1 F2 B0 B1 B2 ");
  // 1F1B over 4 stages and 6 micro-batches (Megatron's forward_backward_pipelining_without_
  // interleaving): stage s warms up with 3 - s forwards.
  const char* want[] = {
      "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5 ",
      "F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 B4 B5 ",
      "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 B5 ",
      "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 ",
  };
  for (int s = 0; s < 4; ++s)
    EXPECT_EQ(show(pipeline_schedule(PipeSchedule::one_f_one_b, 4, s, 6)), want[s]) << s;
  // Fewer micro-batches than stages: the warm-up is cut short.
  EXPECT_EQ(show(pipeline_schedule(PipeSchedule::one_f_one_b, 4, 0, 2)), "F0 F1 B0 B1 ");
  EXPECT_EQ(pipe_schedule_from_name("1f1b"), PipeSchedule::one_f_one_b);
  EXPECT_EQ(pipe_schedule_from_name("gpipe"), PipeSchedule::gpipe);
}

TEST(PipelineSchedule, InFlightBound) {
  for (int stages : {1, 2, 3, 4, 8})
    for (int micro : {1, 2, 3, 4, 7, 16})
      for (int s = 0; s < stages; ++s) {
        auto f1b = pipeline_schedule(PipeSchedule::one_f_one_b, stages, s, micro);
        auto gp = pipeline_schedule(PipeSchedule::gpipe, stages, s, micro);
        EXPECT_EQ(max_in_flight(f1b), std::min(stages - s, micro)) << stages << " " << s;
        EXPECT_EQ(max_in_flight(gp), micro);
        // Every micro-batch forwarded once, backwarded once, forward first; backwards in order
        // (so gradients sum in the single-process order).
        for (const auto* ops : {&f1b, &gp}) {
          ASSERT_EQ(ops->size(), size_t(2 * micro));
          std::vector<int> fwd(micro, -1), bwd(micro, -1);
          int last_b = -1;
          for (size_t i = 0; i < ops->size(); ++i) {
            const PipeOp& op = (*ops)[i];
            auto& seen = op.kind == PipeOp::forward ? fwd : bwd;
            EXPECT_EQ(seen[op.micro], -1);
            seen[op.micro] = int(i);
            if (op.kind == PipeOp::backward) {
              EXPECT_EQ(op.micro, ++last_b);
            }
          }
          for (int m = 0; m < micro; ++m) EXPECT_LT(fwd[m], bwd[m]);
        }
      }
}

// Plays the schedules of all stages together: forward m on stage s needs stage s-1's forward m,
// backward m needs stage s+1's backward m (sends never block). Each round every stage runs its
// next op if its input has arrived; a round where nobody moves is a deadlock.
TEST(PipelineSchedule, RunsWithoutDeadlock) {
  for (PipeSchedule kind : {PipeSchedule::gpipe, PipeSchedule::one_f_one_b})
    for (int stages : {2, 3, 4})
      for (int micro : {1, 3, 4, 8}) {
        std::vector<std::vector<PipeOp>> ops;
        for (int s = 0; s < stages; ++s) ops.push_back(pipeline_schedule(kind, stages, s, micro));
        std::vector<size_t> next(stages, 0);
        std::vector<std::vector<bool>> fdone(stages, std::vector<bool>(micro)),
            bdone(stages, std::vector<bool>(micro));
        for (bool moved = true; moved;) {
          moved = false;
          for (int s = 0; s < stages; ++s) {
            if (next[s] == ops[s].size()) continue;
            const PipeOp& op = ops[s][next[s]];
            const bool ready = op.kind == PipeOp::forward
                                   ? (s == 0 || fdone[s - 1][op.micro])
                                   : (s == stages - 1 || bdone[s + 1][op.micro]);
            if (!ready) continue;
            (op.kind == PipeOp::forward ? fdone : bdone)[s][op.micro] = true;
            ++next[s];
            moved = true;
          }
        }
        for (int s = 0; s < stages; ++s)
          EXPECT_EQ(next[s], ops[s].size())
              << "stage " << s << " of " << stages << ", " << micro << " micro-batches: stuck";
      }
}

}  // namespace
}  // namespace kiln

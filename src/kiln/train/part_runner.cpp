// The runners of a model part (step_runner.h) trained with a whole gradient: a tensor-parallel
// shard under parallel.zero = 0 (TrainState), and a pipeline stage, of the whole model or of a
// shard (Pipeline). The gradient is summed over dp after the step, the tied embedding's over the
// first and last stage, and the update is AdamW, its moments sharded over dp under ZeRO-1
// (DpShardedAdamW, Megatron's distributed optimizer).
#include <cstring>

#include "kiln/ops/elementwise.h"
#include "kiln/train/dp_sharded_adamw.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/step_runners.h"

namespace kiln {
namespace {

class PartRunner : public StepRunner {
 public:
  PartRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part)
      : StepRunner(cfg, groups), part_(std::move(part)), m_(*part_.model) {}

  StatePieces sharded_pieces() override {
    if (dsopt_) part_.opt = dsopt_->gather();  // the part's whole moments, for the checkpoint
    // Every rank writes what it owns: one copy per dp group.
    return groups_.plan.dp_rank == 0 ? model_pieces(m_, *part_.opt, part_.tpm.get())
                                     : StatePieces{};
  }
  int64_t optimizer_steps() const override { return part_.opt->steps(); }
  WholeState gather_whole() override {
    if (dsopt_) part_.opt = dsopt_->gather();
    // Rank 0's pipeline group gathers the stages, then its tp group the shards.
    WholeState w;
    w.owned =
        gather_part(m_, *part_.opt, adamw_config(cfg_), part_.whole_cfg, part_.tpm.get(), groups_);
    w.model = w.owned.model ? w.owned.model.get() : &m_;
    w.opt = w.owned.opt ? w.owned.opt.get() : part_.opt.get();
    return w;
  }
  void checkpoint_done() override {
    if (dsopt_) part_.opt.reset();
  }
  const Model* trained_model() override { return nullptr; }  // a part: samples come from disk

  int64_t state_bytes() const override {
    return dsopt_ ? 2 * m_.weights().nbytes() + dsopt_->state_bytes() : 4 * m_.weights().nbytes();
  }
  int64_t comm_bytes() const override {
    // Besides the Pipeline's and TrainState's own counts: the gradient's and the loss's
    // all-reduces over dp (and the loss's over pp).
    const int dp = groups_.plan.dp, pp = groups_.plan.pp;
    int64_t b = dist::all_reduce_bytes(dp, grads_.numel()) + dist::all_reduce_bytes(dp, 1) +
                (pp > 1 ? dist::all_reduce_bytes(pp, 1) : 0);
    if (dsopt_) b += dsopt_->comm_bytes();
    return b;
  }
  std::string describe() const override {
    return dsopt_ ? ", zero 1 (moments sharded over dp)" : "";
  }

 protected:
  // After the part's forward and backward: the loss and the gradient summed over the ranks.
  double sum_over_ranks(double loss) {
    loss = sum_shares(loss);
    if (groups_.plan.dp > 1) groups_.dp->all_reduce(grads_.f32(), grads_.numel());
    return loss;
  }
  // Called by the subclass once the part is cut and its TrainState or Pipeline built.
  void make_optimizer() {
    grads_ = Tensor::zeros({m_.num_params()});
    if (cfg_.parallel.zero == 1) {  // the part's moments sharded over dp (dp_sharded_adamw.h)
      dsopt_ = std::make_unique<DpShardedAdamW>(m_, *groups_.dp, adamw_config(cfg_), *part_.opt);
      part_.opt.reset();
    }
  }

  bool fp16_overflow() override { return kiln::fp16_overflow(grads_.f32(), grads_.numel()); }
  void scale_grads(float s) override { ops::cpu::scale(grads_.f32(), s, grads_.numel()); }
  double grad_norm() override {
    // The whole model's: this part's counted parameters, summed over tp and pp.
    const bool tied_copy = groups_.plan.pp > 1 && groups_.plan.pp_rank > 0;
    double sq = 0;
    for (const ParamInfo& p : m_.params())
      if (counts_in_whole_norm(p, part_.tpm.get(), tied_copy))
        sq += ops::cpu::sum_squares(grads_.f32() + p.offset, p.numel());
    if (part_.tpm) sq = dist::all_reduce_sum(*groups_.tp, sq);
    if (groups_.plan.pp > 1) sq = dist::all_reduce_sum(*groups_.pp, sq);
    return std::sqrt(sq);
  }
  void adamw(float lr) override {
    if (dsopt_) {
      dsopt_->step(grads_.f32(), lr);
    } else {
      part_.opt->step(m_, grads_.f32(), lr);
    }
  }

  RunnerPart part_;
  Model& m_;
  Tensor grads_;  // (P) the part's gradient
  std::unique_ptr<DpShardedAdamW> dsopt_;
};

// A tensor-parallel shard: TrainState over this rank's rows.
class TensorParallelRunner final : public PartRunner {
 public:
  TensorParallelRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part)
      : PartRunner(cfg, groups, std::move(part)) {
    ts_ = std::make_unique<TrainState>(m_, Bl_, T_, part_.topt);
    make_optimizer();
  }
  double eval(const int* ids, const int* targets, int64_t* counted) override {
    const double mean = ts_->step(m_, ids, targets, nullptr);
    *counted = ts_->counted_tokens();
    return mean;
  }
  int64_t activation_bytes() const override { return int64_t(ts_->bytes()); }
  int64_t comm_bytes() const override { return ts_->comm_bytes() + PartRunner::comm_bytes(); }
  void set_positions(const int32_t* positions) override { ts_->set_positions(positions); }

 private:
  double forward_backward(BatchSource& data, double scale) override {
    ts_->reset_comm_bytes();
    std::memset(grads_.raw(), 0, grads_.nbytes());
    double loss = accumulate(data, scale, [&](int, const int* ids, const int* tg, float s) {
      return ts_->step(m_, ids, tg, grads_.f32(), s);
    });
    loss /= cfg_.train.grad_accum;
    return sum_over_ranks(loss);
  }
  void refresh_weights() override { ts_->refresh_weights(m_); }

  std::unique_ptr<TrainState> ts_;
};

// A pipeline stage (of the whole model or of a tensor-parallel shard).
class PipelineRunner final : public PartRunner {
 public:
  PipelineRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part)
      : PartRunner(cfg, groups, std::move(part)) {
    pipe_ = std::make_unique<Pipeline>(m_, Bl_, T_, part_.topt,
                                       pipe_schedule_from_name(cfg.parallel.schedule),
                                       cfg.train.grad_accum, *groups.pp);
    make_optimizer();
  }
  double eval(const int* ids, const int* targets, int64_t* counted) override {
    return pipe_->eval_step(m_, ids, targets, counted);
  }
  int64_t activation_bytes() const override { return int64_t(pipe_->bytes()); }
  int64_t comm_bytes() const override { return pipe_->comm_bytes() + PartRunner::comm_bytes(); }

 private:
  double forward_backward(BatchSource& data, double scale) override {
    std::memset(grads_.raw(), 0, grads_.nbytes());
    const double loss = sum_over_ranks(pipe_->train_step(m_, data, B_, row0_, grads_.f32(), scale));
    pipe_->reduce_tied_embedding(m_, grads_.f32());
    return loss;
  }
  bool any_stage(bool bad) override { return pipe_->any_stage(bad); }
  void refresh_weights() override { pipe_->refresh_weights(m_); }

  std::unique_ptr<Pipeline> pipe_;
};

}  // namespace

std::unique_ptr<StepRunner> make_part_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             RunnerPart part) {
  if (cfg.parallel.pp > 1) return std::make_unique<PipelineRunner>(cfg, groups, std::move(part));
  return std::make_unique<TensorParallelRunner>(cfg, groups, std::move(part));
}

}  // namespace kiln

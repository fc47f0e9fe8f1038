// The ZeRO runner (step_runner.h): a whole model, or a tensor-parallel shard of one under
// parallel.zero > 0, through TrainState with StepHooks into ZeroAdamW (zero.h), which reduces the
// gradients in buckets during backward and shards them, the moments and the weights by stage.
// One process is this runner at stage 0 over a data-parallel group of one.
#include <string>

#include "kiln/train/step_runners.h"
#include "kiln/train/zero.h"

namespace kiln {
namespace {

class ZeroRunner final : public StepRunner {
 public:
  ZeroRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part)
      : StepRunner(cfg, groups), part_(std::move(part)), m_(*part_.model) {
    ts_ = std::make_unique<TrainState>(m_, Bl_, T_, part_.topt);
    zero_ = std::make_unique<ZeroAdamW>(m_, *groups.dp, cfg.parallel.zero, cfg.parallel.bucket_mb,
                                        adamw_config(cfg), part_.opt.get());
    part_.opt.reset();
    if (part_.tpm) {  // the norm over the whole model, each parameter counted once
      zero_->norm_over_tensor_parallel(groups.tp.get(), [&](int64_t flat) {
        for (const ParamInfo& p : m_.params())
          if (flat >= p.offset && flat < p.offset + p.numel())
            return counts_in_whole_norm(p, part_.tpm.get(), false);
        return true;
      });
    }
  }

  double eval(const int* ids, const int* targets, int64_t* counted) override {
    const double mean = ts_->step(m_, ids, targets, *zero_, false);
    *counted = ts_->counted_tokens();
    return mean;
  }

  StatePieces sharded_pieces() override {
    return to_whole_layout(zero_->state_pieces(), m_, part_.tpm.get());
  }
  int64_t optimizer_steps() const override { return zero_->steps(); }
  WholeState gather_whole() override {
    // Every rank gathers the shards; a tensor-parallel shard's whole state is then on dp rank 0,
    // and its tp group gathers the model.
    WholeState w;
    w.owned.opt = zero_->gather_optimizer();
    zero_->gather_weights();
    if (part_.tpm && groups_.plan.dp_rank == 0)
      w.owned = gather_part(m_, *w.owned.opt, adamw_config(cfg_), part_.whole_cfg, part_.tpm.get(),
                            groups_);
    w.model = w.owned.model ? w.owned.model.get() : &m_;
    w.opt = w.owned.opt.get();
    return w;
  }
  void checkpoint_done() override { zero_->release_weights(); }
  const Model* trained_model() override {
    zero_->gather_weights();  // ZeRO-3: the whole model again
    return part_.tpm ? nullptr : &m_;
  }

  int64_t state_bytes() const override { return zero_->state_bytes(); }
  int64_t activation_bytes() const override { return int64_t(ts_->bytes()); }
  void set_positions(const int32_t* positions) override { ts_->set_positions(positions); }
  const MoeStats* moe_stats() const override { return ts_->moe_stats(); }
  int64_t comm_bytes() const override { return zero_->comm_bytes() + ts_->comm_bytes(); }
  std::string describe() const override {
    return ", zero " + std::to_string(zero_->stage()) + ", " +
           std::to_string(zero_->layout().chunks.size()) + " gradient buckets";
  }

 private:
  double forward_backward(BatchSource& data, double scale) override {
    ts_->reset_comm_bytes();
    zero_->begin_step();
    const int accum = cfg_.train.grad_accum;
    double loss = accumulate(data, scale, [&](int i, const int* ids, const int* tg, float s) {
      zero_->begin_micro(i == accum - 1);
      return ts_->step(m_, ids, tg, *zero_, true, s);
    });
    zero_->finish_backward();
    loss /= accum;
    if (groups_.plan.dp > 1) loss = zero_->sum_over_ranks(float(loss));
    return loss;
  }
  bool fp16_overflow() override { return zero_->fp16_overflow(); }
  void scale_grads(float s) override { zero_->scale_grads(s); }
  double grad_norm() override { return zero_->grad_norm(); }
  void adamw(float lr) override { zero_->adamw_step(lr); }
  void refresh_weights() override { ts_->refresh_weights(m_); }

  RunnerPart part_;
  Model& m_;
  std::unique_ptr<TrainState> ts_;
  std::unique_ptr<ZeroAdamW> zero_;
};

}  // namespace

std::unique_ptr<StepRunner> make_zero_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             RunnerPart part) {
  return std::make_unique<ZeroRunner>(cfg, groups, std::move(part));
}

}  // namespace kiln

// Expert parallelism (parallel.ep > 1; step_runner.h): a Mixture-of-Experts model whose experts
// are split over each run of ep data-parallel ranks (dist::make_expert_groups). Every rank keeps
// the router, attention, norms and embeddings whole and 1/ep of every MoE layer's experts; its
// TrainState sends each routed row to the rank owning its expert and gets the output back
// (TrainOptions::ep). After the step the gradient is summed in two parts: the parameters every
// rank holds over the data-parallel group, each expert's over the ranks holding that expert (the
// expert-data-parallel group, dp/ep ranks). Whole-model norm: the shared parameters once, plus
// the experts summed over the ep group. Checkpoints are gathered (the first ep group's ranks send
// their experts to world rank 0) and reload under any layout.
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/ops/elementwise.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/step_runners.h"

namespace kiln {
namespace {

bool is_expert_weight(const std::string& name) {
  return name.find(".block_sparse_moe.experts.") != std::string::npos;
}

class ExpertParallelRunner final : public StepRunner {
 public:
  ExpertParallelRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part,
                       dist::ExpertGroups eg)
      : StepRunner(cfg, groups), part_(std::move(part)), m_(*part_.model), eg_(std::move(eg)) {
    TrainOptions topt = part_.topt;
    topt.ep = eg_.ep.get();
    ts_ = std::make_unique<TrainState>(m_, Bl_, T_, topt);
    grads_ = Tensor::zeros({m_.num_params()});
    for (const ParamInfo& p : m_.params()) {
      auto& ranges = is_expert_weight(p.name) ? experts_ : shared_;
      if (!ranges.empty() && ranges.back().second == p.offset)
        ranges.back().second += p.numel();  // contiguous: extend the run
      else
        ranges.push_back({p.offset, p.offset + p.numel()});
    }
  }

  double eval(const int* ids, const int* targets, int64_t* counted) override {
    const double mean = ts_->step(m_, ids, targets, nullptr);
    *counted = ts_->counted_tokens();
    return mean;
  }
  StatePieces sharded_pieces() override {
    fail("train", "parallel.ep > 1 writes gathered checkpoints; set parallel.checkpoint=gathered");
  }
  int64_t optimizer_steps() const override { return part_.opt->steps(); }
  WholeState gather_whole() override {
    WholeState w;
    // The first ep group holds every expert once, and world rank 0 is its rank 0.
    if (groups_.plan.dp_rank < cfg_.parallel.ep) {
      const int ep = eg_.ep->size();
      w.owned = gather_parts(m_, *part_.opt, adamw_config(cfg_), *eg_.ep, [&](int r) {
        return expert_part(part_.whole_cfg, full_model_stage(part_.whole_cfg), ep, r);
      });
    }
    w.model = w.owned.model.get();
    w.opt = w.owned.opt.get();
    return w;
  }
  const Model* trained_model() override { return nullptr; }  // a part: samples come from disk
  int64_t state_bytes() const override { return 4 * m_.weights().nbytes(); }
  int64_t activation_bytes() const override { return int64_t(ts_->bytes()); }
  int64_t comm_bytes() const override {
    return ts_->comm_bytes() + dist::all_reduce_bytes(groups_.plan.dp, size(shared_)) +
           dist::all_reduce_bytes(eg_.edp->size(), size(experts_));
  }
  std::string describe() const override {
    const int E = part_.whole_cfg.moe.experts, ep = eg_.ep->size();
    return ", ep " + std::to_string(ep) + " (" + std::to_string(E / ep) + " of " +
           std::to_string(E) + " experts per rank)";
  }
  const MoeStats* moe_stats() const override { return ts_->moe_stats(); }
  void set_positions(const int32_t* positions) override { ts_->set_positions(positions); }

 private:
  using Ranges = std::vector<std::pair<int64_t, int64_t>>;  // [begin, end) in the flat buffer
  static int64_t size(const Ranges& r) {
    int64_t n = 0;
    for (auto [b, e] : r) n += e - b;
    return n;
  }
  // The gradient of `ranges` summed over `comm`, through one packed buffer.
  void sum_over(const Ranges& ranges, dist::Comm& comm) {
    if (comm.size() == 1) return;
    std::vector<float> packed(size_t(size(ranges)));
    int64_t at = 0;
    for (auto [b, e] : ranges) {
      std::memcpy(packed.data() + at, grads_.f32() + b, size_t(e - b) * sizeof(float));
      at += e - b;
    }
    comm.all_reduce(packed.data(), int64_t(packed.size()));
    at = 0;
    for (auto [b, e] : ranges) {
      std::memcpy(grads_.f32() + b, packed.data() + at, size_t(e - b) * sizeof(float));
      at += e - b;
    }
  }

  double forward_backward(BatchSource& data, double scale) override {
    ts_->reset_comm_bytes();
    std::memset(grads_.raw(), 0, grads_.nbytes());
    double loss = accumulate(data, scale, [&](int, const int* ids, const int* tg, float s) {
      return ts_->step(m_, ids, tg, grads_.f32(), s);
    });
    loss = sum_shares(loss / cfg_.train.grad_accum);
    sum_over(shared_, *groups_.dp);
    sum_over(experts_, *eg_.edp);
    return loss;
  }
  bool fp16_overflow() override {
    float f = kiln::fp16_overflow(grads_.f32(), grads_.numel()) ? 1.0f : 0.0f;
    eg_.ep->all_reduce(&f, 1, dist::ReduceOp::max);  // the experts differ across the ep group
    return f > 0;
  }
  void scale_grads(float s) override { ops::cpu::scale(grads_.f32(), s, grads_.numel()); }
  double grad_norm() override {
    double shared = 0, experts = 0;
    for (auto [b, e] : shared_) shared += ops::cpu::sum_squares(grads_.f32() + b, e - b);
    for (auto [b, e] : experts_) experts += ops::cpu::sum_squares(grads_.f32() + b, e - b);
    return std::sqrt(shared + dist::all_reduce_sum(*eg_.ep, experts));
  }
  void adamw(float lr) override { part_.opt->step(m_, grads_.f32(), lr); }
  void refresh_weights() override { ts_->refresh_weights(m_); }

  RunnerPart part_;
  Model& m_;
  dist::ExpertGroups eg_;
  std::unique_ptr<TrainState> ts_;
  Tensor grads_;             // (P) this rank's part's gradient
  Ranges shared_, experts_;  // the flat buffer's runs of shared and expert parameters
};

}  // namespace

std::unique_ptr<StepRunner> make_expert_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                               RunnerPart part) {
  dist::ExpertGroups eg = dist::make_expert_groups(*groups.dp, cfg.parallel.ep);
  const AdamWConfig adamw = adamw_config(cfg);
  if (!part.opt) part.opt = std::make_unique<AdamW>(*part.model, adamw);
  const ModelConfig& c = part.model->config();
  keep_stage(part.model, *part.opt, adamw,
             expert_part(c, full_model_stage(c), cfg.parallel.ep, eg.ep->rank()));
  return std::make_unique<ExpertParallelRunner>(cfg, groups, std::move(part), std::move(eg));
}

}  // namespace kiln

// The LoRA runner (step_runner.h), method lora and qlora: the base model frozen, a PEFT LoRA
// adapter (model/lora.h) trained. TrainState runs the base's GEMMs (at the run's precision) plus
// the adapter's low-rank terms and computes the adapter's gradient only; AdamW, clipping and the
// data-parallel sum run over the adapter's flat buffer. Checkpoints hold the adapter
// (checkpoint.h, save_lora_checkpoint). A whole model per rank: dp only. qlora holds the base's
// linear weights in NF4 (model/nf4_base.h) and gives their fp32 copies back to the system.
#include <cstdio>
#include <cstring>
#include <string>

#include "kiln/core/error.h"
#include "kiln/model/nf4_base.h"
#include "kiln/ops/elementwise.h"
#include "kiln/train/loss_scaler.h"
#include "kiln/train/step_runners.h"

namespace kiln {
namespace {

class LoraRunner final : public StepRunner {
 public:
  LoraRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, std::unique_ptr<Model> base)
      : StepRunner(cfg, groups),
        base_(std::move(base)),
        adapter_(*base_, cfg.lora),
        opt_(adapter_.num_params(), adamw_config(cfg)),
        grads_(Tensor::zeros({adapter_.num_params()})) {
    adapter_.init(cfg.seed);
    TrainOptions topt{cfg.train.precision, cfg.train.recompute, cfg.train.recompute_layers};
    topt.lora = &adapter_;
    if (cfg.method == "qlora") {
      nf4_ = std::make_unique<Nf4Base>(*base_);
      nf4_->release_fp32(*base_);
      topt.nf4 = nf4_.get();
    }
    ts_ = std::make_unique<TrainState>(*base_, Bl_, T_, topt);
  }

  double eval(const int* ids, const int* targets, int64_t* counted) override {
    const double mean = ts_->step(*base_, ids, targets, nullptr);
    *counted = ts_->counted_tokens();
    return mean;
  }

  StatePieces sharded_pieces() override {
    fail("train",
         "method lora writes gathered checkpoints (the adapter); use "
         "parallel.checkpoint = gathered");
  }
  int64_t optimizer_steps() const override { return opt_.steps(); }
  WholeState gather_whole() override {
    fail("train", "a LoRA run's checkpoint is its adapter (StepRunner::adapter)");
  }
  AdapterState adapter() override { return {&adapter_, &opt_, base_.get()}; }
  // The base with the adapter merged, for the samples after the last step.
  const Model* trained_model() override {
    merged_ = std::make_unique<Model>(base_->config());
    std::memcpy(merged_->weights().raw(), base_->weights().raw(), base_->weights().nbytes());
    if (nf4_) nf4_->restore_fp32(*merged_);  // QLoRA merges into the dequantized base, as PEFT
    merge_lora(*merged_, adapter_.adapter());
    return merged_.get();
  }

  // The frozen base's weights (under qlora the linear ones in NF4), and the adapter's weights,
  // gradient and two moments.
  int64_t state_bytes() const override {
    const int64_t base = nf4_ ? 4 * (base_->num_params() - nf4_->numel()) + int64_t(nf4_->bytes())
                              : base_->weights().nbytes();
    return base + 4 * adapter_.weights().nbytes();
  }
  int64_t activation_bytes() const override { return int64_t(ts_->bytes()); }
  void set_positions(const int32_t* positions) override { ts_->set_positions(positions); }
  int64_t comm_bytes() const override {
    return dist::all_reduce_bytes(groups_.plan.dp, grads_.numel()) +
           dist::all_reduce_bytes(groups_.plan.dp, 1);
  }
  std::string describe() const override {
    const LoraConfig& c = adapter_.config();
    std::string targets;
    for (const std::string& t : c.target_modules) targets += (targets.empty() ? "" : ",") + t;
    std::string s =
        str(", LoRA r ", c.r, " alpha ", c.alpha, c.rslora ? " (rsLoRA)" : "", " dropout ",
            c.dropout, " on ", targets, ": ", adapter_.num_params(), " trainable of ",
            base_->num_params() + adapter_.num_params(), " parameters");
    if (nf4_) {
      char bits[32];
      std::snprintf(bits, sizeof bits, "%.3f", 8.0 * double(nf4_->bytes()) / double(nf4_->numel()));
      s += str(", the base's ", nf4_->numel(), " linear weights in NF4 (", bits, " bits each)");
    }
    return s;
  }

 private:
  double forward_backward(BatchSource& data, double scale) override {
    std::memset(grads_.raw(), 0, grads_.nbytes());
    double loss = accumulate(data, scale, [&](int i, const int* ids, const int* tg, float s) {
      // Dropout masks from (seed, step, micro-batch): a resumed run draws the same ones.
      ts_->set_lora_seed(cfg_.seed ^ (uint64_t(opt_.steps()) << 20) ^ uint64_t(i));
      return ts_->step(*base_, ids, tg, grads_.f32(), s);
    });
    loss = sum_shares(loss / cfg_.train.grad_accum);
    if (groups_.plan.dp > 1) groups_.dp->all_reduce(grads_.f32(), grads_.numel());
    return loss;
  }
  bool fp16_overflow() override { return kiln::fp16_overflow(grads_.f32(), grads_.numel()); }
  void scale_grads(float s) override { ops::cpu::scale(grads_.f32(), s, grads_.numel()); }
  double grad_norm() override { return kiln::grad_norm(grads_.f32(), grads_.numel()); }
  void adamw(float lr) override {
    opt_.step(adapter_.params(), adapter_.weights().f32(), grads_.f32(), lr);
  }

  std::unique_ptr<Model> base_;
  std::unique_ptr<Nf4Base> nf4_;  // qlora
  LoraWeights adapter_;
  AdamW opt_;
  Tensor grads_;  // the adapter's gradient
  std::unique_ptr<TrainState> ts_;
  std::unique_ptr<Model> merged_;
};

}  // namespace

std::unique_ptr<StepRunner> make_lora_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             std::unique_ptr<Model> base) {
  return std::make_unique<LoraRunner>(cfg, groups, std::move(base));
}

}  // namespace kiln

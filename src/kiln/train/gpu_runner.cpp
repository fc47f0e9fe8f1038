// The GPU runner (step_runner.h): device: cuda, one process, one GPU. CudaTrainState holds the
// weights, gradients and moments on the device; the host model and an AdamW receive them only for
// checkpoints and the final samples.
#include "kiln/core/error.h"
#include "kiln/train/cuda_train_state.h"
#include "kiln/train/step_runners.h"

namespace kiln {
namespace {

class GpuRunner final : public StepRunner {
 public:
  GpuRunner(const TrainConfig& cfg, dist::ProcessGroups& groups, RunnerPart part)
      : StepRunner(cfg, groups), part_(std::move(part)), m_(*part_.model) {
    gpu_ = std::make_unique<CudaTrainState>(m_, Bl_, T_, cfg.train.precision, cfg.train.tf32,
                                            adamw_config(cfg));
    if (part_.opt) gpu_->upload_optimizer(*part_.opt);  // resumed
  }

  double eval(const int* ids, const int* targets, int64_t* counted) override {
    const double mean = gpu_->step(ids, targets, false);
    *counted = gpu_->counted_tokens();
    return mean;
  }

  StatePieces sharded_pieces() override {
    download();
    return model_pieces(m_, *part_.opt, nullptr);
  }
  int64_t optimizer_steps() const override { return part_.opt->steps(); }
  WholeState gather_whole() override {
    download();
    WholeState w;
    w.model = &m_;
    w.opt = part_.opt.get();
    return w;
  }
  const Model* trained_model() override {
    gpu_->download_weights(m_);
    return &m_;
  }

  int64_t state_bytes() const override { return int64_t(gpu_->state_bytes()); }
  int64_t activation_bytes() const override { return int64_t(gpu_->activation_bytes()); }
  int64_t comm_bytes() const override { return 0; }  // one process, one GPU: nothing to sum
  std::string device_suffix() const override { return " on " + cuda_device_name(); }

 private:
  // The device's weights and moments into the host model and AdamW, for a checkpoint.
  void download() {
    if (!part_.opt) part_.opt = std::make_unique<AdamW>(m_, adamw_config(cfg_));
    gpu_->download(m_, *part_.opt);
  }
  double forward_backward(BatchSource& data, double scale) override {
    gpu_->zero_grads();
    const double loss = accumulate(data, scale, [&](int, const int* ids, const int* tg, float s) {
      return gpu_->step(ids, tg, true, s);
    });
    return loss / cfg_.train.grad_accum;
  }
  // fp16 is refused by CudaTrainState, so there is no loss scale to undo; the clipping factor is
  // folded into the fused AdamW launch (CudaTrainState::clip_and_step), not applied separately.
  bool fp16_overflow() override { return false; }
  void scale_grads(float) override {
    fail("train", "internal: the GPU runner scales gradients only inside its AdamW launch");
  }
  void adamw(float) override {
    fail("train", "internal: the GPU runner updates only through CudaTrainState::clip_and_step");
  }
  double grad_norm() override { return gpu_->grad_norm(); }
  bool update(float lr, double norm) override {
    return gpu_->clip_and_step(lr, cfg_.optim.grad_clip, norm);
  }

  RunnerPart part_;
  Model& m_;
  std::unique_ptr<CudaTrainState> gpu_;
};

}  // namespace

std::unique_ptr<StepRunner> make_gpu_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                            RunnerPart part) {
  return std::make_unique<GpuRunner>(cfg, groups, std::move(part));
}

}  // namespace kiln

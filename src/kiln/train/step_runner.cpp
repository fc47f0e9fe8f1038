#include "kiln/train/step_runner.h"

#include <cmath>

#include "kiln/core/error.h"
#include "kiln/train/step_runners.h"
#include "kiln/train/tensor_parallel_state.h"

namespace kiln {

bool counts_in_whole_norm(const ParamInfo& p, const TensorParallelMap* tpm, bool tied_copy) {
  if (tied_copy && is_token_embedding(p.name)) return false;
  return !tpm || tpm->rank() == 0 || !tpm->replicated(p.name);
}

StepRunner::StepRunner(const TrainConfig& cfg, dist::ProcessGroups& groups)
    : cfg_(cfg),
      groups_(groups),
      B_(cfg.train.batch_size),
      T_(cfg.train.seq_len),
      Bl_(B_ / groups.plan.dp),
      row0_(groups.plan.dp_rank * Bl_),
      ids_(size_t(B_) * T_),
      targets_(size_t(B_) * T_) {}

void StepRunner::set_positions(const int32_t* positions) {
  KILN_CHECK(!positions, "train",
             "data.packing runs on the CPU for now; use data.packing: false or device: cpu");
}

StepRunner::Outcome StepRunner::step(BatchSource& data, float lr, double scale, bool skip) {
  const bool fp16 = cfg_.train.precision == Precision::fp16;
  Outcome o;
  o.loss = forward_backward(data, scale);
  const bool overflow = fp16 && fp16_overflow();
  bool bad = !std::isfinite(o.loss) || overflow || skip;
  // The whole model skips together: every shard and every stage.
  if (groups_.plan.tp > 1) {
    float f = bad ? 1.0f : 0.0f;
    groups_.tp->all_reduce(&f, 1, dist::ReduceOp::max);
    bad = f > 0;
  }
  bad = any_stage(bad);
  if (bad) return o;
  // Unscaling is exact (2^-k).
  if (fp16) scale_grads(float(1.0 / scale));
  o.norm = grad_norm();
  o.norm_taken = true;
  o.updated = update(lr, o.norm);
  if (o.updated) refresh_weights();
  return o;
}

bool StepRunner::update(float lr, double norm) {
  return clip_and_update(
      norm, cfg_.optim.grad_clip, [&](float s) { scale_grads(s); }, [&] { adamw(lr); });
}

double StepRunner::sum_shares(double x) {
  float f = float(x);
  if (groups_.plan.dp > 1) groups_.dp->all_reduce(&f, 1);
  if (groups_.plan.pp > 1) groups_.pp->all_reduce(&f, 1);
  return double(f);
}

GatheredModel gather_part(const Model& m, AdamW& opt, const AdamWConfig& cfg,
                          const ModelConfig& whole_cfg, const TensorParallelMap* tpm,
                          const dist::ProcessGroups& g) {
  if (g.plan.dp_rank != 0) return {};
  GatheredModel shard;  // this tp rank's whole shard, on pipeline stage 0
  if (g.plan.pp > 1) shard = gather_stages(m, opt, cfg, *g.pp);
  if (!tpm || g.plan.pp_rank != 0) return shard;
  GatheredModel whole;
  if (g.plan.tp_rank == 0) {
    whole.model = std::make_unique<Model>(whole_cfg);
    whole.opt = std::make_unique<AdamW>(*whole.model, cfg);
  }
  gather_training_state(*tpm, *g.tp, shard.model ? *shard.model : m, shard.opt ? *shard.opt : opt,
                        whole.model.get(), whole.opt.get());
  return whole;
}

std::unique_ptr<StepRunner> make_step_runner(const TrainConfig& cfg, dist::ProcessGroups& groups,
                                             std::unique_ptr<Model> model,
                                             std::unique_ptr<AdamW> opt) {
  const int tp = cfg.parallel.tp, pp = cfg.parallel.pp;
  if (model->config().moe.enabled()) {
    KILN_CHECK(!cfg.trains_adapter(), "train",
               "LoRA and QLoRA on a Mixture-of-Experts model are not built; use method: full");
    KILN_CHECK(tp == 1 && pp == 1, "train", "a Mixture-of-Experts model trains with data ",
               "and expert parallelism and ZeRO (parallel.dp, parallel.ep, parallel.zero); ",
               "parallel.tp = ", tp, " and parallel.pp = ", pp,
               " are not built for its experts yet: set both to 1");
  }
  if (cfg.parallel.ep > 1) {
    KILN_CHECK(model->config().moe.enabled(), "train", "parallel.ep = ", cfg.parallel.ep,
               " splits a Mixture-of-Experts model's experts, but this model is dense; use "
               "parallel.ep = 1");
    KILN_CHECK(cfg.parallel.zero == 0 && cfg.device == Device::cpu, "train",
               "parallel.ep > 1 runs with parallel.zero = 0 on device: cpu for now");
    RunnerPart part;
    part.whole_cfg = model->config();
    part.topt = {cfg.train.precision, cfg.train.recompute, cfg.train.recompute_layers};
    part.model = std::move(model);
    part.opt = std::move(opt);
    return make_expert_runner(cfg, groups, std::move(part));
  }
  if (cfg.trains_adapter()) return make_lora_runner(cfg, groups, std::move(model));
  const AdamWConfig adamw = adamw_config(cfg);
  RunnerPart part;
  part.whole_cfg = model->config();
  part.topt = {cfg.train.precision, cfg.train.recompute, cfg.train.recompute_layers};
  // Every rank starts from the whole model (built or loaded identically) and keeps its part:
  // its tensor-parallel shard, then its pipeline stage of that.
  if (tp > 1 || pp > 1) {
    if (!opt) opt = std::make_unique<AdamW>(*model, adamw);
    if (tp > 1) {
      part.tpm = std::make_unique<TensorParallelMap>(part.whole_cfg, tp, groups.plan.tp_rank);
      auto shard = std::make_unique<Model>(part.tpm->config());
      auto shard_opt = std::make_unique<AdamW>(*shard, adamw);
      scatter_training_state(*part.tpm, *model, *opt, *shard, *shard_opt);
      model = std::move(shard);
      opt = std::move(shard_opt);
      part.topt =
          part.tpm->train_options(part.topt, groups.tp.get(), cfg.parallel.sequence_parallel);
    }
    if (pp > 1)
      keep_stage(model, *opt, adamw, pipeline_stage(model->config(), pp, groups.plan.pp_rank));
  }
  part.model = std::move(model);
  part.opt = std::move(opt);
  if (cfg.device == Device::cuda) return make_gpu_runner(cfg, groups, std::move(part));
  // A whole model, or a tensor-parallel shard of one under ZeRO: ZeroAdamW, which also syncs
  // the gradients during backward (StepHooks). A shard or a stage otherwise: AdamW on its
  // gradient, summed over dp after the step.
  if (pp == 1 && (tp == 1 || cfg.parallel.zero > 0))
    return make_zero_runner(cfg, groups, std::move(part));
  return make_part_runner(cfg, groups, std::move(part));
}

}  // namespace kiln

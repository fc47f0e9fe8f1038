#include "kiln/train/dp_sharded_adamw.h"

#include <algorithm>
#include <cstring>

#include "kiln/ops/adamw.h"

namespace kiln {

DpShardedAdamW::DpShardedAdamW(Model& part, dist::Comm& dp, AdamWConfig cfg, const AdamW& whole)
    : part_(part), dp_(dp), cfg_(cfg), P_(part.num_params()) {
  n_ = (P_ + dp.size() - 1) / dp.size();
  lo_ = std::min(P_, n_ * dp.rank());
  hi_ = std::min(P_, lo_ + n_);
  m_ = Tensor::zeros({n_});
  v_ = Tensor::zeros({n_});
  auto& w = const_cast<AdamW&>(whole);
  std::memcpy(m_.raw(), w.m().f32() + lo_, size_t(hi_ - lo_) * sizeof(float));
  std::memcpy(v_.raw(), w.v().f32() + lo_, size_t(hi_ - lo_) * sizeof(float));
  steps_ = whole.steps();
}

void DpShardedAdamW::step(const float* grads, float lr) {
  ++steps_;
  float* w = part_.weights().f32();
  // Each parameter's piece of the block, with that parameter's weight decay.
  for (const ParamInfo& p : part_.params()) {
    const int64_t a = std::max(lo_, p.offset), b = std::min(hi_, p.offset + p.numel());
    if (a >= b) continue;
    const ops::AdamWParams hp = adamw_params(cfg_, lr, p.decay, steps_);
    ops::cpu::adamw_step(w + a, grads + a, m_.f32() + (a - lo_), v_.f32() + (a - lo_), b - a, hp);
  }
  // Every rank's updated block into every rank's weights (blocks padded to n_ for the gather).
  Tensor mine = Tensor::zeros({n_}), all = Tensor::empty({n_ * dp_.size()});
  std::memcpy(mine.raw(), w + lo_, size_t(hi_ - lo_) * sizeof(float));
  dp_.all_gather(mine.f32(), all.f32(), n_);
  std::memcpy(w, all.f32(), size_t(P_) * sizeof(float));
  comm_bytes_ = dist::scatter_gather_bytes(dp_.size(), n_);
}

std::unique_ptr<AdamW> DpShardedAdamW::gather() const {
  Tensor m = Tensor::empty({n_ * dp_.size()}), v = Tensor::empty({n_ * dp_.size()});
  dp_.all_gather(m_.f32(), m.f32(), n_);
  dp_.all_gather(v_.f32(), v.f32(), n_);
  Tensor mp = Tensor::empty({P_}), vp = Tensor::empty({P_});
  std::memcpy(mp.raw(), m.raw(), size_t(P_) * sizeof(float));
  std::memcpy(vp.raw(), v.raw(), size_t(P_) * sizeof(float));
  return std::make_unique<AdamW>(cfg_, mp, vp, steps_);
}

}  // namespace kiln

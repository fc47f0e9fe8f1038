#include "kiln/train/pipeline.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/ops/elementwise.h"

namespace kiln {

namespace {

// Message tags on the pipeline group: micro-batch m's activation goes forward with tag 2m, its
// gradient backward with tag 2m+1; evaluation's activations use the first tag past those.
int forward_tag(int micro) {
  return 2 * micro;
}
int backward_tag(int micro) {
  return 2 * micro + 1;
}
int eval_tag(int micro_batches) {
  return 2 * micro_batches;
}

}  // namespace

PipeSchedule pipe_schedule_from_name(const std::string& name) {
  if (name == "gpipe") return PipeSchedule::gpipe;
  if (name == "1f1b") return PipeSchedule::one_f_one_b;
  fail("pipeline", "parallel.schedule '", name, "' is unknown; use 1f1b or gpipe");
}

std::vector<PipeOp> pipeline_schedule(PipeSchedule kind, int stages, int stage, int micro) {
  KILN_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro >= 1, "pipeline",
             "no schedule for stage ", stage, " of ", stages, " with ", micro, " micro-batches");
  std::vector<PipeOp> ops;
  if (kind == PipeSchedule::gpipe) {
    for (int m = 0; m < micro; ++m) ops.push_back({PipeOp::forward, m});
    for (int m = 0; m < micro; ++m) ops.push_back({PipeOp::backward, m});
    return ops;
  }
  // 1F1B: the later stages start their backwards sooner, so earlier stages need fewer forwards
  // in hand before the first gradient comes back.
  const int warmup = std::min(stages - 1 - stage, micro);
  int f = 0, b = 0;
  while (f < warmup) ops.push_back({PipeOp::forward, f++});
  while (f < micro) {
    ops.push_back({PipeOp::forward, f++});
    ops.push_back({PipeOp::backward, b++});
  }
  while (b < micro) ops.push_back({PipeOp::backward, b++});
  return ops;
}

int max_in_flight(const std::vector<PipeOp>& ops) {
  int live = 0, most = 0;
  for (const PipeOp& op : ops) {
    live += op.kind == PipeOp::forward ? 1 : -1;
    most = std::max(most, live);
  }
  return most;
}

void keep_stage(std::unique_ptr<Model>& model, AdamW& opt, const AdamWConfig& cfg,
                const PipelineStage& stage) {
  auto part = std::make_unique<Model>(model->config(), stage);
  AdamW part_opt(*part, cfg);
  copy_shared_params(*model, model->weights().f32(), *part, part->weights().f32());
  copy_shared_params(*model, opt.m().f32(), *part, part_opt.m().f32());
  copy_shared_params(*model, opt.v().f32(), *part, part_opt.v().f32());
  part_opt.set_steps(opt.steps());
  model = std::move(part);
  opt = std::move(part_opt);
}

GatheredModel gather_stages(const Model& model, AdamW& opt, const AdamWConfig& cfg,
                            dist::Comm& pp) {
  return gather_parts(model, opt, cfg, pp, [&](int s) {
    return pipeline_stage(model.config(), pp.size(), s);
  });
}

GatheredModel gather_parts(const Model& model, AdamW& opt, const AdamWConfig& cfg,
                           dist::Comm& comm, const std::function<PipelineStage(int)>& part_of) {
  dist::Comm& pp = comm;
  const int stages = pp.size();
  // Between steps no pipeline message is in flight, so tag 0 cannot match a training message.
  if (pp.rank() != 0) {
    const Tensor* parts[] = {&model.weights(), &opt.m(), &opt.v()};
    for (const Tensor* t : parts) pp.send(t->f32(), t->numel(), 0, 0);
    return {};
  }
  GatheredModel g;
  g.model = std::make_unique<Model>(model.config());
  g.opt = std::make_unique<AdamW>(*g.model, cfg);
  g.opt->set_steps(opt.steps());
  auto take = [&](const Model& part, const Tensor& w, const Tensor& m, const Tensor& v) {
    copy_shared_params(part, w.f32(), *g.model, g.model->weights().f32());
    copy_shared_params(part, m.f32(), *g.model, g.opt->m().f32());
    copy_shared_params(part, v.f32(), *g.model, g.opt->v().f32());
  };
  take(model, model.weights(), opt.m(), opt.v());
  for (int s = 1; s < stages; ++s) {
    Model part(model.config(), part_of(s));
    Tensor m = Tensor::empty({part.num_params()}), v = Tensor::empty({part.num_params()});
    for (Tensor* t : {&part.weights(), &m, &v}) pp.recv(t->f32(), t->numel(), s, 0);
    take(part, part.weights(), m, v);
  }
  return g;
}

Pipeline::Pipeline(const Model& model, int B, int T, TrainOptions opt, PipeSchedule schedule,
                   int micro_batches, dist::Comm& pp)
    : B_(B), T_(T), micro_(micro_batches), pp_(pp), stage_(pp.rank()), stages_(pp.size()) {
  KILN_CHECK(model.stage() == pipeline_stage(model.config(), stages_, stage_), "pipeline", "rank ",
             stage_, " of the pipeline group holds a model for another stage");
  ops_ = pipeline_schedule(schedule, stages_, stage_, micro_);
  const int slots = max_in_flight(ops_);
  for (int s = 0; s < slots; ++s) slots_.push_back(std::make_unique<TrainState>(model, B, T, opt));
  fwd_sent_.resize(slots);
  bwd_sent_.resize(slots);
  // What crosses a stage boundary is the residual stream: this rank's rows of it (all B*T, or
  // B*T/tp under sequence parallelism).
  const int64_t rows = slots_[0]->residual_rows(), C = model.config().hidden;
  in_ = Tensor::empty({rows, C});
  dout_ = Tensor::empty({rows, C});
  // Collective over pp (every stage calls split): the first and the last stage form the group.
  if (model.config().tie_embeddings && stages_ > 1) {
    const bool member = stage_ == 0 || stage_ == stages_ - 1;
    embedding_group_ = pp.split(member ? 0 : 1, stage_);
    if (!member) embedding_group_.reset();
  }
}

double Pipeline::forward(const Model& model, int micro, const int* ids, const int* targets,
                         float* grads, float grad_scale, const int* positions) {
  const int slot = micro % int(slots_.size());
  TrainState& ts = *slots_[slot];
  ts.set_positions(positions);  // kept by the slot for this micro-batch's backward
  const int64_t n = in_.numel();
  if (stage_ > 0) pp_.recv(in_.f32(), n, stage_ - 1, forward_tag(micro));
  // The slot's buffers are about to be overwritten: its output, and (on the last stage, whose
  // forward computes the head's gradient) the input gradient its last backward sent.
  fwd_sent_[slot].wait();
  bwd_sent_[slot].wait();
  const double loss = ts.forward_stage(model, ids, in_.f32(), targets, grads, grad_scale);
  // Sends never block the schedule: a blocking send here could wait on a neighbour that is
  // itself waiting to send to us (1F1B's steady state), a deadlock.
  if (stage_ + 1 < stages_) {
    fwd_sent_[slot] = pp_.send_async(ts.stage_output(), n, stage_ + 1, forward_tag(micro));
    comm_bytes_ += n * int64_t(sizeof(float));
  }
  return loss;
}

void Pipeline::backward(const Model& model, int micro, const int* ids, float* grads) {
  const int slot = micro % int(slots_.size());
  TrainState& ts = *slots_[slot];
  const int64_t n = dout_.numel();
  if (stage_ + 1 < stages_) pp_.recv(dout_.f32(), n, stage_ + 1, backward_tag(micro));
  bwd_sent_[slot].wait();
  const float* din = ts.backward_stage(model, ids, dout_.f32(), grads);
  if (stage_ > 0) {
    bwd_sent_[slot] = pp_.send_async(din, n, stage_ - 1, backward_tag(micro));
    comm_bytes_ += n * int64_t(sizeof(float));
  }
}

double Pipeline::train_step(const Model& model, BatchSource& data, int B_global, int row0,
                            float* grads, double grad_scale) {
  const size_t batch = size_t(B_global) * T_, rows = size_t(B_) * T_, off = size_t(row0) * T_;
  ids_.resize(micro_ * batch);
  targets_.resize(micro_ * batch);
  bool packed = false;
  comm_bytes_ = 0;
  for (auto& ts : slots_) ts->reset_comm_bytes();
  // The loss is a mean over each global batch's counted tokens: weight this rank's mean by its
  // share of them (as the data-parallel loop does).
  std::vector<double> share(micro_);
  for (int m = 0; m < micro_; ++m) {
    int32_t* tg = targets_.data() + m * batch;
    data.next(B_global, ids_.data() + m * batch, tg);
    if (const int32_t* pos = data.positions()) {  // packed rows: kept for the micro-batch's slot
      positions_.resize(micro_ * batch);
      std::copy(pos, pos + batch, positions_.begin() + m * batch);
      packed = true;
    }
    const int64_t total = std::count_if(tg, tg + batch, [](int32_t t) { return t >= 0; });
    const int64_t local =
        std::count_if(tg + off, tg + off + rows, [](int32_t t) { return t >= 0; });
    share[m] = total > 0 ? double(local) / double(total) : 0.0;
  }
  double loss = 0;
  for (const PipeOp& op : ops_) {
    const int m = op.micro;
    const int* ids = ids_.data() + m * batch + off;
    if (op.kind == PipeOp::forward) {
      const int* targets = targets_.data() + m * batch + off;
      const int* pos = packed ? positions_.data() + m * batch + off : nullptr;
      loss += share[m] *
              forward(model, m, ids, targets, grads, float(grad_scale / micro_ * share[m]), pos);
    } else {
      backward(model, m, ids, grads);
    }
  }
  for (auto* sent : {&fwd_sent_, &bwd_sent_})
    for (dist::Request& r : *sent) r.wait();
  return loss / micro_;
}

double Pipeline::eval_step(const Model& model, const int* ids, const int* targets,
                           int64_t* counted) {
  TrainState& ts = *slots_[0];
  ts.set_positions(nullptr);  // validation rows hold one sequence each
  const int64_t n = in_.numel();
  const int tag = eval_tag(micro_);
  if (stage_ > 0) pp_.recv(in_.f32(), n, stage_ - 1, tag);
  const double loss = ts.forward_stage(model, ids, in_.f32(), targets, nullptr);
  // Forward only, so nothing comes back: the next stage is waiting in recv.
  if (stage_ + 1 < stages_) pp_.send(ts.stage_output(), n, stage_ + 1, tag);
  *counted = stage_ + 1 == stages_ ? ts.counted_tokens() : 0;
  return loss;
}

void Pipeline::reduce_tied_embedding(const Model& model, float* grads) {
  if (!embedding_group_) return;
  const ModelConfig& c = model.config();
  const int64_t n = int64_t(c.vocab_size) * c.hidden;
  embedding_group_->all_reduce(model.bind(grads).wte, n);
  comm_bytes_ += dist::all_reduce_bytes(embedding_group_->size(), n);
}

bool Pipeline::any_stage(bool flag) {
  float f = flag ? 1.0f : 0.0f;
  pp_.all_reduce(&f, 1, dist::ReduceOp::max);
  comm_bytes_ += dist::all_reduce_bytes(stages_, 1);
  return f > 0;
}

void Pipeline::refresh_weights(const Model& model) {
  for (auto& ts : slots_) ts->refresh_weights(model);
}

size_t Pipeline::bytes() const {
  size_t b = in_.nbytes() + dout_.nbytes();
  for (const auto& ts : slots_) b += ts->bytes();
  return b;
}

}  // namespace kiln

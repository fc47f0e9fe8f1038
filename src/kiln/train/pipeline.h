// Pipeline parallelism: the layers split over parallel.pp stages (model/pipeline_stage.h), each
// rank holding and updating only its stage's parameters, with an optimizer step's micro-batches
// (train.grad_accum) streamed through the stages by a GPipe or 1F1B schedule. Activations go
// forward and their gradients backward over the pipeline group with Comm send/recv.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/data/batch_source.h"
#include "kiln/dist/comm.h"
#include "kiln/model/transformer.h"
#include "kiln/train/optimizer.h"

namespace kiln {

enum class PipeSchedule { gpipe, one_f_one_b };
PipeSchedule pipe_schedule_from_name(const std::string& name);  // "gpipe" | "1f1b"

struct PipeOp {
  enum Kind { forward, backward } kind;
  int micro;  // micro-batch index
  bool operator==(const PipeOp&) const = default;
};

// The order in which stage `stage` of `stages` runs `micro` micro-batches' passes. GPipe: every
// forward, then every backward (all micro-batches' activations alive at once). 1F1B (PipeDream-
// Flush, Megatron's default): stages-1-stage warm-up forwards, then one forward and one backward
// in turn, then the remaining backwards, so at most stages-stage micro-batches are in flight.
// Both run the backwards in micro-batch order, so every parameter's gradient sums in the order of
// a single process.
std::vector<PipeOp> pipeline_schedule(PipeSchedule kind, int stages, int stage, int micro);
// The most micro-batches forwarded but not yet backwarded at any point of `ops`.
int max_in_flight(const std::vector<PipeOp>& ops);

// Replaces a whole model and its AdamW state by the part stage `stage` holds (the run starts or
// resumes from the whole model on every rank; afterwards each rank keeps only its stage).
void keep_stage(std::unique_ptr<Model>& model, AdamW& opt, const AdamWConfig& cfg,
                const PipelineStage& stage);

// The whole model and its AdamW state, assembled from every stage of a pipeline group.
struct GatheredModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<AdamW> opt;
};
// Collective over `pp`: every stage sends its weights and moments to stage 0, which returns the
// whole model (the others return an empty GatheredModel). Costs stage 0 a whole model's weights
// and moments in memory for as long as the result lives.
GatheredModel gather_stages(const Model& model, AdamW& opt, const AdamWConfig& cfg, dist::Comm& pp);
// The same over any split of the model into parts, rank r of `comm` holding part_of(r) (expert
// parallelism: each rank's run of the experts).
GatheredModel gather_parts(const Model& model, AdamW& opt, const AdamWConfig& cfg,
                           dist::Comm& comm, const std::function<PipelineStage(int)>& part_of);

// One rank's stage of a pipeline: the schedule, one TrainState per micro-batch that can be in
// flight, and the exchange with the neighbouring stages over the pipeline group `pp` (rank =
// stage). Every call is collective over `pp`.
class Pipeline {
 public:
  // B: this rank's rows of each micro-batch, T: the sequence length.
  Pipeline(const Model& model, int B, int T, TrainOptions opt, PipeSchedule schedule,
           int micro_batches, dist::Comm& pp);

  // One optimizer step's forwards and backwards: draws micro_batches global batches of B_global
  // rows from `data` (every stage draws, so the stream stays in step), runs this rank's rows
  // [row0, row0 + B) of each and adds the gradient, scaled by grad_scale / micro_batches, into
  // grads. Returns the step's loss on the last stage (the mean over micro-batches of each global
  // batch's token mean, this rank's share of it) and 0 on the others.
  double train_step(const Model& model, BatchSource& data, int B_global, int row0, float* grads,
                    double grad_scale);
  // Forward only of one micro-batch (B, T) of this rank's rows: the mean loss over the targets
  // (last stage; 0 elsewhere), the number of counted targets in *counted (0 elsewhere).
  double eval_step(const Model& model, const int* ids, const int* targets, int64_t* counted);

  // With tied embeddings the first and the last stage each hold the embedding matrix: sum their
  // gradients of it (Megatron's embedding group), so both make the same update.
  void reduce_tied_embedding(const Model& model, float* grads);
  // Whether `flag` is set on any stage.
  bool any_stage(bool flag);

  void refresh_weights(const Model& model);
  size_t bytes() const;  // activations of every micro-batch slot
  // Bytes this rank sent since train_step() began: activations, input gradients, and its share
  // of the tied-embedding, norm and skip reductions (ring costs, dist/comm.h).
  int64_t comm_bytes() const {  // + the stage's tensor-parallel collectives
    int64_t b = comm_bytes_;
    for (const auto& ts : slots_) b += ts->comm_bytes();
    return b;
  }

 private:
  // positions: the micro-batch's packed rows (TrainState::set_positions), or null.
  double forward(const Model& model, int micro, const int* ids, const int* targets, float* grads,
                 float grad_scale, const int* positions);
  void backward(const Model& model, int micro, const int* ids, float* grads);

  int B_, T_, micro_;
  dist::Comm& pp_;
  int stage_, stages_;
  std::vector<PipeOp> ops_;
  std::vector<std::unique_ptr<TrainState>> slots_;  // micro-batch m lives in slot m % size
  std::vector<dist::Request> fwd_sent_, bwd_sent_;  // per slot: its output / input-gradient send
  std::unique_ptr<dist::Comm> embedding_group_;     // first and last stage (tied embeddings)
  Tensor in_, dout_;                                // (B*T, C) received activation / gradient
  std::vector<int32_t> ids_, targets_;              // (micro, B_global, T)
  std::vector<int32_t> positions_;                  // (micro, B_global, T) when the data packs
  int64_t comm_bytes_ = 0;
};

}  // namespace kiln

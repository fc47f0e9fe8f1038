// The NCCL backend of dist::Comm: the same collectives, on buffers in GPU memory, run on the
// communication stream (cuda::streams().comm) so they overlap compute. MPI (or any Comm) only
// launches the job and carries NCCL's unique id from rank 0 to the others; one GPU per rank
// (device = local rank modulo the GPUs on the node).
//
// Ordering: each collective first makes the communication stream wait for everything already
// queued on the compute stream (an event), so it reads what compute produced; its Request's
// wait() blocks the host until the collective is done, and wait_on(compute) orders later compute
// after it without blocking the host. NCCL has no tags: a send matches the peer's recv issued in
// the same order (kiln's pipeline schedules pair them in order anyway).
//
// Failures: every NCCL call is checked (the message names the call, the op and NCCL's reason);
// waits poll ncclCommGetAsyncError and give up after `timeout_s` (0 = never), aborting the
// communicator so a dead peer cannot hang the job.
#pragma once

#ifdef KILN_HAVE_NCCL

#include <nccl.h>

#include <memory>

#include "kiln/cuda/runtime.h"
#include "kiln/dist/comm.h"

namespace kiln::cuda {

void check_nccl(ncclResult_t r, const char* call, const char* op);

class NcclComm final : public dist::Comm {
 public:
  // Collective over `boot` (e.g. MpiComm::world()): rank 0 creates the unique id, `boot`
  // broadcasts it, every rank joins with boot's rank and size. Selects device local_rank % GPUs.
  static std::unique_ptr<NcclComm> create(dist::Comm& boot, int local_rank, double timeout_s = 0);
  ~NcclComm() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // All buffers are device pointers.
  dist::Request all_reduce_async(float* data, int64_t n,
                                 dist::ReduceOp op = dist::ReduceOp::sum) override;
  dist::Request reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) override;
  dist::Request all_gather_async(const float* in, float* out, int64_t n_per_rank) override;
  dist::Request broadcast_async(float* data, int64_t n, int root) override;
  dist::Request send_async(const float* data, int64_t n, int peer, int tag) override;
  dist::Request recv_async(float* data, int64_t n, int peer, int tag) override;
  void send(const float* data, int64_t n, int peer, int tag) override;
  void recv(float* data, int64_t n, int peer, int tag) override;
  void barrier() override;
  // One NCCL group of point-to-point sends and receives (NCCL has no all-to-all-v).
  void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::unique_ptr<dist::Comm> split(int color, int key) override;

  ncclComm_t handle() const { return comm_; }

 private:
  NcclComm(ncclComm_t c, double timeout_s);
  // Orders the comm stream after compute, then runs `launch` on the comm stream and returns a
  // Request completing with it.
  template <class F>
  dist::Request run(const char* op, F&& launch);

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  double timeout_s_ = 0;
  DeviceBuffer<float> one_;  // barrier's all-reduce of one float
};

}  // namespace kiln::cuda

#endif  // KILN_HAVE_NCCL

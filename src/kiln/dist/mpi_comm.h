// The Open MPI backend of Comm (comm.h): fp32 collectives as MPI_I* calls, so every operation is
// non-blocking underneath and the blocking forms are the async call plus MPI_Wait. Built only when
// CMake finds MPI (KILN_HAVE_MPI). MPI is initialized with MPI_THREAD_FUNNELED: call it from the
// thread that created the MpiRuntime.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>

#include "kiln/dist/comm.h"

namespace kiln::dist {

// Owns MPI's lifetime: MPI_Init_thread in the constructor, MPI_Finalize in the destructor. If MPI
// was already initialized (by a host program) it neither initializes nor finalizes. One per
// process; communicators must be destroyed before it.
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  // Ends every rank of the job (MPI_Abort on MPI_COMM_WORLD); for errors seen on one rank only,
  // where the others would wait in a collective forever.
  [[noreturn]] static void abort(int code);

 private:
  bool owns_ = false;
};

class MpiComm final : public Comm {
 public:
  // A communicator over MPI_COMM_WORLD (not freed on destruction). Needs a live MpiRuntime.
  static std::unique_ptr<MpiComm> world();
  ~MpiComm() override;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Request all_reduce_async(float* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Request reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) override;
  Request all_gather_async(const float* in, float* out, int64_t n_per_rank) override;
  Request broadcast_async(float* data, int64_t n, int root) override;
  Request send_async(const float* data, int64_t n, int peer, int tag) override;
  Request recv_async(float* data, int64_t n, int peer, int tag) override;
  void send(const float* data, int64_t n, int peer, int tag) override;
  void recv(float* data, int64_t n, int peer, int tag) override;
  void barrier() override;
  std::unique_ptr<Comm> split(int color, int key) override;

  MPI_Comm handle() const { return comm_; }

  // Every wait of every MpiComm in this process gives up after `seconds` (0 = never; the
  // default): it prints which rank waited on which operation, then ends the job (MPI_Abort), so
  // a dead or hung rank cannot leave the others waiting forever. Must exceed the longest
  // legitimate wait (e.g. rank 0 writing a checkpoint while the others wait at a barrier).
  static void set_timeout(double seconds);

 private:
  MpiComm(MPI_Comm comm, bool owned);
  // A Request for r that names the call, its size, the peer (or -1) and this communicator.
  Request pending(MPI_Request r, const char* call, int64_t n, int peer = -1) const;
  MPI_Comm comm_;
  bool owned_;  // created by split, so MPI_Comm_free on destruction
  int rank_ = 0, size_ = 1;
};

}  // namespace kiln::dist

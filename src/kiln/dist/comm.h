// The one communicator interface every parallel scheme talks to (data, tensor, pipeline, ZeRO).
// Backends: SingleComm (one process, no-ops; the default) and MpiComm (Open MPI, mpi_comm.h); an
// NCCL backend implements the same class, so nothing above dist/ changes with the transport.
// Buffers are fp32 on the host; counts are elements, not bytes. Every collective is collective:
// all ranks of the communicator call it, in the same order, with the same sizes.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace kiln::dist {

enum class ReduceOp { sum, max, min };

// A pending non-blocking operation. wait() blocks until it is done and its buffers may be reused;
// until then neither the input nor the output buffer may be touched. test() asks without
// blocking; polling it between pieces of compute is also what lets MPI progress the operation.
// Destroying a handle that was never waited on waits for it (like std::jthread), so buffers are
// never left in flight.
class [[nodiscard]] Request {
 public:
  // What a backend implements: wait for its operation, or test whether it is done (true once
  // done); both throw kiln::Error on failure.
  struct Pending {
    virtual ~Pending() = default;
    virtual void wait() = 0;
    virtual bool test() = 0;
  };

  Request() = default;  // an already-finished request
  explicit Request(std::unique_ptr<Pending> p) : pending_(std::move(p)) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&& o) noexcept;
  ~Request();

  void wait();  // idempotent; the second call returns at once
  // Whether the operation is done, without blocking; true from then on, like after wait().
  [[nodiscard]] bool test();
  bool pending() const { return pending_ != nullptr; }

 private:
  std::unique_ptr<Pending> pending_;
};

class Comm {
 public:
  virtual ~Comm() = default;

  virtual int rank() const = 0;  // 0 .. size()-1
  virtual int size() const = 0;

  // In place: data (n) becomes the elementwise op over all ranks' data. Ring cost per rank:
  // 2·(P-1)/P·n floats sent.
  [[nodiscard]] virtual Request all_reduce_async(float* data, int64_t n,
                                                 ReduceOp op = ReduceOp::sum) = 0;
  // in (P·n_per_rank) is summed over ranks; this rank gets block rank() in out (n_per_rank).
  // Cost: (P-1)·n_per_rank floats sent per rank. in and out must not overlap.
  [[nodiscard]] virtual Request reduce_scatter_async(const float* in, float* out,
                                                     int64_t n_per_rank) = 0;
  // Each rank's in (n_per_rank) lands at block rank in out (P·n_per_rank) on every rank.
  // Cost: (P-1)·n_per_rank floats received per rank. in and out must not overlap.
  [[nodiscard]] virtual Request all_gather_async(const float* in, float* out,
                                                 int64_t n_per_rank) = 0;
  // root's data (n) is copied into data on every rank. Cost: about n floats per rank.
  [[nodiscard]] virtual Request broadcast_async(float* data, int64_t n, int root) = 0;
  // Point to point (pipeline activations). A send matches the recv on peer with the same tag.
  [[nodiscard]] virtual Request send_async(const float* data, int64_t n, int peer, int tag) = 0;
  [[nodiscard]] virtual Request recv_async(float* data, int64_t n, int peer, int tag) = 0;

  // Blocking forms: the async call followed by wait().
  void all_reduce(float* data, int64_t n, ReduceOp op = ReduceOp::sum) {
    all_reduce_async(data, n, op).wait();
  }
  void reduce_scatter(const float* in, float* out, int64_t n_per_rank) {
    reduce_scatter_async(in, out, n_per_rank).wait();
  }
  void all_gather(const float* in, float* out, int64_t n_per_rank) {
    all_gather_async(in, out, n_per_rank).wait();
  }
  void broadcast(float* data, int64_t n, int root) { broadcast_async(data, n, root).wait(); }
  // Blocking send may wait for the matching recv (large messages): order sends and recvs so a
  // ring does not deadlock, or use the async forms.
  virtual void send(const float* data, int64_t n, int peer, int tag) = 0;
  virtual void recv(float* data, int64_t n, int peer, int tag) = 0;
  virtual void barrier() = 0;
  // All-to-all with per-peer counts (MPI_Alltoallv; expert parallelism's token dispatch): the
  // send_counts[p] floats at send + sum(send_counts[0..p)) go to rank p, and rank p's block for
  // this rank lands at recv + sum(recv_counts[0..p)). send_counts[p] here must equal rank p's
  // recv_counts[rank()]. Both vectors have size() entries. Blocking. The default posts every
  // receive and send point to point (send_async / recv_async) and waits for them all.
  virtual void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                            const std::vector<int64_t>& recv_counts);

  // Collective over this communicator: ranks with the same color form a new communicator, ranked
  // by key (ties by this communicator's rank). Like MPI_Comm_split; color must be >= 0.
  [[nodiscard]] virtual std::unique_ptr<Comm> split(int color, int key) = 0;
};

// Bytes one rank sends in the ring forms above (fp32 elements), for communication accounting.
inline int64_t all_reduce_bytes(int ranks, int64_t n) {
  return (2 * int64_t(ranks - 1) * n * int64_t(sizeof(float)) + ranks / 2) / ranks;  // rounded
}
inline int64_t scatter_gather_bytes(int ranks, int64_t n_per_rank) {  // reduce-scatter, all-gather
  return int64_t(ranks - 1) * n_per_rank * int64_t(sizeof(float));
}

// Collectives beyond fp32, carried by the fp32 ones. all_reduce_sum: x summed over the ranks to
// about 48 bits (each rank sends a float and its remainder). all_gather_exact: every rank's x
// (below 2^63; index = rank), exact (in three 21-bit pieces).
double all_reduce_sum(Comm& comm, double x);
std::vector<uint64_t> all_gather_exact(Comm& comm, uint64_t x);

// The single-process communicator: size 1, every collective is a copy or a no-op.
class SingleComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  Request all_reduce_async(float* data, int64_t n, ReduceOp op = ReduceOp::sum) override;
  Request reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) override;
  Request all_gather_async(const float* in, float* out, int64_t n_per_rank) override;
  Request broadcast_async(float* data, int64_t n, int root) override;
  Request send_async(const float* data, int64_t n, int peer, int tag) override;
  Request recv_async(float* data, int64_t n, int peer, int tag) override;
  void send(const float* data, int64_t n, int peer, int tag) override;
  void recv(float* data, int64_t n, int peer, int tag) override;
  void barrier() override {}
  void all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                    const std::vector<int64_t>& recv_counts) override;
  std::unique_ptr<Comm> split(int color, int key) override;
};

}  // namespace kiln::dist

#include "kiln/cuda/nccl_comm.h"

#ifdef KILN_HAVE_NCCL

#include <chrono>
#include <cstring>
#include <thread>

namespace kiln::cuda {

void check_nccl(ncclResult_t r, const char* call, const char* op) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  throw Error(str("[nccl ", op, "] ", call, " failed: ", ncclGetErrorString(r), " (",
                  ncclGetLastError(nullptr), ")"));
}

#define KILN_NCCL(op, call) ::kiln::cuda::check_nccl((call), #call, (op))

namespace {

ncclRedOp_t to_nccl(dist::ReduceOp op) {
  switch (op) {
    case dist::ReduceOp::sum:
      return ncclSum;
    case dist::ReduceOp::max:
      return ncclMax;
    case dist::ReduceOp::min:
      return ncclMin;
  }
  return ncclSum;
}

// A collective in flight: an event after it on the comm stream.
class NcclPending final : public dist::Request::Pending {
 public:
  NcclPending(ncclComm_t comm, const char* op, double timeout_s)
      : comm_(comm), op_(op), timeout_s_(timeout_s) {
    done_.record(streams().comm);
  }
  void wait() override {
    auto t0 = std::chrono::steady_clock::now();
    while (!test()) {
      ncclResult_t async = ncclSuccess;
      KILN_NCCL(op_, ncclCommGetAsyncError(comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        ncclCommAbort(comm_);
        check_nccl(async, "ncclCommGetAsyncError", op_);
      }
      double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (timeout_s_ > 0 && waited > timeout_s_) {
        ncclCommAbort(comm_);
        fail(str("nccl ", op_).c_str(), "no answer for ", waited,
             " s (parallel.timeout_s); a rank died or hangs; the communicator was aborted");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  bool test() override { return done_.done(); }

 private:
  Event done_;
  ncclComm_t comm_;
  const char* op_;
  double timeout_s_;
};

}  // namespace

NcclComm::NcclComm(ncclComm_t c, double timeout_s) : comm_(c), timeout_s_(timeout_s) {
  KILN_NCCL("init", ncclCommCount(comm_, &size_));
  KILN_NCCL("init", ncclCommUserRank(comm_, &rank_));
  one_ = DeviceBuffer<float>(1, "nccl barrier", streams().comm);
}

NcclComm::~NcclComm() {
  if (comm_) ncclCommDestroy(comm_);
}

std::unique_ptr<NcclComm> NcclComm::create(dist::Comm& boot, int local_rank, double timeout_s) {
  require("nccl");
  int gpus = 0;
  KILN_CUDA("nccl init", cudaGetDeviceCount(&gpus));
  KILN_CUDA("nccl init", cudaSetDevice(local_rank % gpus));
  // The 128-byte unique id travels as 32 floats: broadcast copies bits, it does no arithmetic.
  static_assert(sizeof(ncclUniqueId) % sizeof(float) == 0);
  ncclUniqueId id{};
  if (boot.rank() == 0) KILN_NCCL("init", ncclGetUniqueId(&id));
  float words[sizeof(ncclUniqueId) / sizeof(float)];
  std::memcpy(words, &id, sizeof id);
  boot.broadcast(words, int64_t(sizeof(ncclUniqueId) / sizeof(float)), 0);
  std::memcpy(&id, words, sizeof id);
  ncclComm_t c = nullptr;
  KILN_NCCL("init", ncclCommInitRank(&c, boot.size(), id, boot.rank()));
  return std::unique_ptr<NcclComm>(new NcclComm(c, timeout_s));
}

template <class F>
dist::Request NcclComm::run(const char* op, F&& launch) {
  Event ready;
  ready.record(streams().compute);
  ready.wait_on(streams().comm);
  launch(streams().comm.get());
  return dist::Request(std::make_unique<NcclPending>(comm_, op, timeout_s_));
}

dist::Request NcclComm::all_reduce_async(float* data, int64_t n, dist::ReduceOp op) {
  return run("all_reduce", [&](cudaStream_t s) {
    KILN_NCCL("all_reduce",
              ncclAllReduce(data, data, size_t(n), ncclFloat32, to_nccl(op), comm_, s));
  });
}

dist::Request NcclComm::reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) {
  return run("reduce_scatter", [&](cudaStream_t s) {
    KILN_NCCL("reduce_scatter",
              ncclReduceScatter(in, out, size_t(n_per_rank), ncclFloat32, ncclSum, comm_, s));
  });
}

dist::Request NcclComm::all_gather_async(const float* in, float* out, int64_t n_per_rank) {
  return run("all_gather", [&](cudaStream_t s) {
    KILN_NCCL("all_gather", ncclAllGather(in, out, size_t(n_per_rank), ncclFloat32, comm_, s));
  });
}

dist::Request NcclComm::broadcast_async(float* data, int64_t n, int root) {
  return run("broadcast", [&](cudaStream_t s) {
    KILN_NCCL("broadcast", ncclBroadcast(data, data, size_t(n), ncclFloat32, root, comm_, s));
  });
}

dist::Request NcclComm::send_async(const float* data, int64_t n, int peer, int) {
  return run("send", [&](cudaStream_t s) {
    KILN_NCCL("send", ncclSend(data, size_t(n), ncclFloat32, peer, comm_, s));
  });
}

dist::Request NcclComm::recv_async(float* data, int64_t n, int peer, int) {
  return run("recv", [&](cudaStream_t s) {
    KILN_NCCL("recv", ncclRecv(data, size_t(n), ncclFloat32, peer, comm_, s));
  });
}

void NcclComm::send(const float* data, int64_t n, int peer, int tag) {
  send_async(data, n, peer, tag).wait();
}
void NcclComm::recv(float* data, int64_t n, int peer, int tag) {
  recv_async(data, n, peer, tag).wait();
}

void NcclComm::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts,
                            float* recv, const std::vector<int64_t>& recv_counts) {
  KILN_CHECK(int(send_counts.size()) == size_ && int(recv_counts.size()) == size_,
             "nccl all_to_all_v", "need one send and one receive count per rank (", size_, ")");
  run("all_to_all_v", [&](cudaStream_t s) {
    KILN_NCCL("all_to_all_v", ncclGroupStart());
    int64_t so = 0, ro = 0;
    for (int p = 0; p < size_; ++p) {
      if (send_counts[size_t(p)] > 0)
        KILN_NCCL("all_to_all_v", ncclSend(send + so, size_t(send_counts[size_t(p)]),
                                           ncclFloat32, p, comm_, s));
      if (recv_counts[size_t(p)] > 0)
        KILN_NCCL("all_to_all_v", ncclRecv(recv + ro, size_t(recv_counts[size_t(p)]),
                                           ncclFloat32, p, comm_, s));
      so += send_counts[size_t(p)];
      ro += recv_counts[size_t(p)];
    }
    KILN_NCCL("all_to_all_v", ncclGroupEnd());
  }).wait();
}

void NcclComm::barrier() {
  all_reduce(one_.data(), 1);
}

std::unique_ptr<dist::Comm> NcclComm::split(int color, int key) {
  KILN_CHECK(color >= 0, "nccl split", "color must be >= 0, got ", color);
  ncclComm_t c = nullptr;
  KILN_NCCL("split", ncclCommSplit(comm_, color, key, &c, nullptr));
  return std::unique_ptr<dist::Comm>(new NcclComm(c, timeout_s_));
}

}  // namespace kiln::cuda

#endif  // KILN_HAVE_NCCL

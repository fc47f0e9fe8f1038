#include "kiln/dist/mpi_comm.h"

#include <climits>
#include <cstdio>
#include <cstdlib>

#include "kiln/core/error.h"

namespace kiln::dist {

// Every MPI call goes through check(): communicators use MPI_ERRORS_RETURN, so a failure comes
// back as a code, turned here into an Error naming the call, MPI's reason and the fix.
static void check(int rc, const char* call, const char* fix) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
  fail("mpi", call, " failed: ", std::string(msg, len), ": ", fix);
}

static constexpr const char* kFixLaunch =
    "check that every rank calls the same collectives in the same order with the same sizes, and "
    "that the job was started with mpirun";

// MPI counts are int; kiln's are int64_t.
static int count(const char* op, int64_t n) {
  KILN_CHECK(n >= 0 && n <= INT_MAX, op, "element count ", n, " is outside MPI's int range [0, ",
             INT_MAX, "]: split the buffer into chunks");
  return static_cast<int>(n);
}

static void check_peer(const char* op, int peer, int size) {
  KILN_CHECK(peer >= 0 && peer < size, op, "peer/root ", peer,
             " is out of range for a communicator of size ", size);
}

namespace {
class MpiPending final : public Request::Pending {
 public:
  MpiPending(MPI_Request r, const char* call) : req_(r), call_(call) {}
  void wait() override { check(MPI_Wait(&req_, MPI_STATUS_IGNORE), call_, kFixLaunch); }
  bool test() override {
    int done = 0;
    check(MPI_Test(&req_, &done, MPI_STATUS_IGNORE), call_, kFixLaunch);
    return done != 0;
  }

 private:
  MPI_Request req_;
  const char* call_;  // the MPI_I* call that started it, for the error message
};

Request pending(MPI_Request r, const char* call) {
  return Request(std::make_unique<MpiPending>(r, call));
}
}  // namespace

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int inited = 0;
  check(MPI_Initialized(&inited), "MPI_Initialized", "reinstall Open MPI (scripts/setup.sh)");
  if (inited) return;
  int provided = 0;
  check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread",
        "start the program with mpirun -np N, and check the Open MPI install (scripts/setup.sh)");
  owns_ = true;
  // Errors come back as codes (checked by check()) instead of killing the job silently.
  check(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
        "check the Open MPI install (scripts/setup.sh)");
  KILN_CHECK(provided >= MPI_THREAD_FUNNELED, "mpi", "MPI_Init_thread provided thread level ",
             provided, ", below MPI_THREAD_FUNNELED: use an Open MPI built with thread support");
}

MpiRuntime::~MpiRuntime() {
  if (owns_) MPI_Finalize();  // nothing useful to do with an error at exit
}

void MpiRuntime::abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

MpiComm::MpiComm(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank", "create an MpiRuntime before any MpiComm");
  check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size", "create an MpiRuntime before any MpiComm");
}

std::unique_ptr<MpiComm> MpiComm::world() {
  int inited = 0;
  check(MPI_Initialized(&inited), "MPI_Initialized", "reinstall Open MPI (scripts/setup.sh)");
  KILN_CHECK(inited, "mpi", "MpiComm::world() called before MPI was initialized: create a ",
             "kiln::dist::MpiRuntime first");
  return std::unique_ptr<MpiComm>(new MpiComm(MPI_COMM_WORLD, false));
}

MpiComm::~MpiComm() {
  if (owned_) MPI_Comm_free(&comm_);
}

static MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return MPI_SUM;
    case ReduceOp::max:
      return MPI_MAX;
    case ReduceOp::min:
      return MPI_MIN;
  }
  fail("all_reduce", "unknown ReduceOp ", static_cast<int>(op));
}

Request MpiComm::all_reduce_async(float* data, int64_t n, ReduceOp op) {
  MPI_Request r;
  check(
      MPI_Iallreduce(MPI_IN_PLACE, data, count("all_reduce", n), MPI_FLOAT, mpi_op(op), comm_, &r),
      "MPI_Iallreduce", kFixLaunch);
  return pending(r, "MPI_Iallreduce");
}

Request MpiComm::reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) {
  MPI_Request r;
  check(MPI_Ireduce_scatter_block(in, out, count("reduce_scatter", n_per_rank), MPI_FLOAT, MPI_SUM,
                                  comm_, &r),
        "MPI_Ireduce_scatter_block", kFixLaunch);
  return pending(r, "MPI_Ireduce_scatter_block");
}

Request MpiComm::all_gather_async(const float* in, float* out, int64_t n_per_rank) {
  MPI_Request r;
  const int c = count("all_gather", n_per_rank);
  check(MPI_Iallgather(in, c, MPI_FLOAT, out, c, MPI_FLOAT, comm_, &r), "MPI_Iallgather",
        kFixLaunch);
  return pending(r, "MPI_Iallgather");
}

Request MpiComm::broadcast_async(float* data, int64_t n, int root) {
  check_peer("broadcast", root, size_);
  MPI_Request r;
  check(MPI_Ibcast(data, count("broadcast", n), MPI_FLOAT, root, comm_, &r), "MPI_Ibcast",
        kFixLaunch);
  return pending(r, "MPI_Ibcast");
}

Request MpiComm::send_async(const float* data, int64_t n, int peer, int tag) {
  check_peer("send", peer, size_);
  MPI_Request r;
  check(MPI_Isend(data, count("send", n), MPI_FLOAT, peer, tag, comm_, &r), "MPI_Isend",
        "check the peer rank and that the tag is in [0, MPI_TAG_UB]");
  return pending(r, "MPI_Isend");
}

Request MpiComm::recv_async(float* data, int64_t n, int peer, int tag) {
  check_peer("recv", peer, size_);
  MPI_Request r;
  check(MPI_Irecv(data, count("recv", n), MPI_FLOAT, peer, tag, comm_, &r), "MPI_Irecv",
        "check the peer rank and that the tag is in [0, MPI_TAG_UB]");
  return pending(r, "MPI_Irecv");
}

void MpiComm::send(const float* data, int64_t n, int peer, int tag) {
  check_peer("send", peer, size_);
  check(MPI_Send(data, count("send", n), MPI_FLOAT, peer, tag, comm_), "MPI_Send",
        "check the peer rank and that the tag is in [0, MPI_TAG_UB]");
}

void MpiComm::recv(float* data, int64_t n, int peer, int tag) {
  check_peer("recv", peer, size_);
  check(MPI_Recv(data, count("recv", n), MPI_FLOAT, peer, tag, comm_, MPI_STATUS_IGNORE),
        "MPI_Recv", "check that the sender sends exactly n floats with the same tag");
}

void MpiComm::barrier() {
  check(MPI_Barrier(comm_), "MPI_Barrier", kFixLaunch);
}

std::unique_ptr<Comm> MpiComm::split(int color, int key) {
  KILN_CHECK(color >= 0, "split", "color must be >= 0, got ", color);
  MPI_Comm sub;
  check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split", kFixLaunch);
  check(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler",
        "check the Open MPI install (scripts/setup.sh)");
  return std::unique_ptr<Comm>(new MpiComm(sub, true));
}

}  // namespace kiln::dist

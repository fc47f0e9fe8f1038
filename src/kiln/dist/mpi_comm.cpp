#include "kiln/dist/mpi_comm.h"

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

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

double g_timeout_s = 0;  // MpiComm::set_timeout; 0 = wait forever

// A pending MPI_I* operation. With a timeout, wait() polls MPI_Test instead of blocking in
// MPI_Wait, so a peer that died or hangs ends the job with a message naming this rank and the
// operation, instead of every rank waiting forever.
class MpiPending final : public Request::Pending {
 public:
  MpiPending(MPI_Request r, std::string what, MPI_Comm comm, int peer)
      : req_(r), what_(std::move(what)), comm_(comm), peer_(peer) {}
  void wait() override {
    if (g_timeout_s <= 0) {
      check(MPI_Wait(&req_, MPI_STATUS_IGNORE), what_.c_str(), kFixLaunch);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    for (int polls = 0;; ++polls) {
      int done = 0;
      check(MPI_Test(&req_, &done, MPI_STATUS_IGNORE), what_.c_str(), kFixLaunch);
      if (done) return;
      // Spin briefly (most waits end within microseconds), then sleep between polls.
      if (polls < 1000) continue;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (waited > g_timeout_s) timed_out(waited);
    }
  }
  bool test() override {
    int done = 0;
    check(MPI_Test(&req_, &done, MPI_STATUS_IGNORE), what_.c_str(), kFixLaunch);
    return done != 0;
  }

 private:
  [[noreturn]] void timed_out(double waited) const {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr,
                 "error: [mpi] rank %d: %s got no answer for %.0f s (parallel.timeout_s = %g) "
                 "from world rank(s) %s: one of them died or stopped responding; ending the job\n",
                 rank, what_.c_str(), waited, g_timeout_s, waited_on().c_str());
    std::fflush(stderr);
    MpiRuntime::abort(3);
  }
  // The world ranks this operation waits on: the peer, or the communicator's other members.
  std::string waited_on() const {
    MPI_Group group, world;
    int n = 0, me = -1;
    MPI_Comm_group(comm_, &group);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    MPI_Group_size(group, &n);
    MPI_Comm_rank(comm_, &me);
    std::string out;
    for (int r = 0; r < n; ++r) {
      if (r == me || (peer_ >= 0 && r != peer_)) continue;
      int w = -1;
      MPI_Group_translate_ranks(group, 1, &r, world, &w);
      out += (out.empty() ? "" : ", ") + std::to_string(w);
    }
    return out;
  }

  MPI_Request req_;
  std::string what_;  // the call, its size and its communicator, for the messages
  MPI_Comm comm_;     // ... and which communicator and peer (-1: a collective), for waited_on()
  int peer_;
};

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

void MpiComm::set_timeout(double seconds) {
  g_timeout_s = seconds;
}

Request MpiComm::pending(MPI_Request r, const char* call, int64_t n, int peer) const {
  std::string what = std::string(call) + " of " + std::to_string(n) + " floats";
  if (peer >= 0) what += " with rank " + std::to_string(peer);
  what += " on a communicator of " + std::to_string(size_) + " ranks (rank " +
          std::to_string(rank_) + " there)";
  return Request(std::make_unique<MpiPending>(r, std::move(what), comm_, peer));
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
  return pending(r, "MPI_Iallreduce", n);
}

Request MpiComm::reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) {
  MPI_Request r;
  check(MPI_Ireduce_scatter_block(in, out, count("reduce_scatter", n_per_rank), MPI_FLOAT, MPI_SUM,
                                  comm_, &r),
        "MPI_Ireduce_scatter_block", kFixLaunch);
  return pending(r, "MPI_Ireduce_scatter_block", n_per_rank * size_);
}

Request MpiComm::all_gather_async(const float* in, float* out, int64_t n_per_rank) {
  MPI_Request r;
  const int c = count("all_gather", n_per_rank);
  check(MPI_Iallgather(in, c, MPI_FLOAT, out, c, MPI_FLOAT, comm_, &r), "MPI_Iallgather",
        kFixLaunch);
  return pending(r, "MPI_Iallgather", n_per_rank * size_);
}

Request MpiComm::broadcast_async(float* data, int64_t n, int root) {
  check_peer("broadcast", root, size_);
  MPI_Request r;
  check(MPI_Ibcast(data, count("broadcast", n), MPI_FLOAT, root, comm_, &r), "MPI_Ibcast",
        kFixLaunch);
  return pending(r, "MPI_Ibcast", n, root);
}

Request MpiComm::send_async(const float* data, int64_t n, int peer, int tag) {
  check_peer("send", peer, size_);
  MPI_Request r;
  check(MPI_Isend(data, count("send", n), MPI_FLOAT, peer, tag, comm_, &r), "MPI_Isend",
        "check the peer rank and that the tag is in [0, MPI_TAG_UB]");
  return pending(r, "MPI_Isend", n, peer);
}

Request MpiComm::recv_async(float* data, int64_t n, int peer, int tag) {
  check_peer("recv", peer, size_);
  MPI_Request r;
  check(MPI_Irecv(data, count("recv", n), MPI_FLOAT, peer, tag, comm_, &r), "MPI_Irecv",
        "check the peer rank and that the tag is in [0, MPI_TAG_UB]");
  return pending(r, "MPI_Irecv", n, peer);
}

// The blocking forms go through the same timed wait as the async ones.
void MpiComm::send(const float* data, int64_t n, int peer, int tag) {
  send_async(data, n, peer, tag).wait();
}

void MpiComm::recv(float* data, int64_t n, int peer, int tag) {
  recv_async(data, n, peer, tag).wait();
}

void MpiComm::barrier() {
  MPI_Request r;
  check(MPI_Ibarrier(comm_, &r), "MPI_Ibarrier", kFixLaunch);
  pending(r, "MPI_Ibarrier", 0).wait();
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

#include "kiln/dist/comm.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kiln/core/error.h"

namespace kiln::dist {

Request& Request::operator=(Request&& o) noexcept {
  if (this != &o) {
    Request old(std::move(*this));  // waits for what this handle held when it goes out of scope
    pending_ = std::move(o.pending_);
  }
  return *this;
}

Request::~Request() {
  if (!pending_) return;
  try {
    pending_->wait();
  } catch (const std::exception& e) {
    // A destructor cannot throw, and a failed collective leaves the ranks out of step: stop.
    std::fprintf(stderr, "%s (in a Request destroyed without wait())\n", e.what());
    std::abort();
  }
}

void Request::wait() {
  if (!pending_) return;
  auto p = std::move(pending_);
  p->wait();
}

bool Request::test() {
  if (!pending_) return true;
  if (!pending_->test()) return false;
  pending_.reset();
  return true;
}

static void check_count(const char* op, int64_t n) {
  KILN_CHECK(n >= 0, op, "element count must be >= 0, got ", n);
}

Request SingleComm::all_reduce_async(float* data, int64_t n, ReduceOp op) {
  check_count("all_reduce", n);
  return {};
}

Request SingleComm::reduce_scatter_async(const float* in, float* out, int64_t n_per_rank) {
  check_count("reduce_scatter", n_per_rank);
  if (n_per_rank > 0 && in != out) std::memcpy(out, in, n_per_rank * sizeof(float));
  return {};
}

void Comm::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts, float* recv,
                        const std::vector<int64_t>& recv_counts) {
  const int P = size(), me = rank();
  KILN_CHECK(int(send_counts.size()) == P && int(recv_counts.size()) == P, "all_to_all_v",
             "need one send and one receive count per rank (", P, "), got ", send_counts.size(),
             " and ", recv_counts.size());
  constexpr int kTag = 0x4d6f45;  // "MoE": its own tag, apart from pipeline activations
  std::vector<Request> pending;
  int64_t soff = 0, roff = 0;
  std::vector<int64_t> send_at(static_cast<size_t>(P)), recv_at(static_cast<size_t>(P));
  for (int p = 0; p < P; ++p) {
    check_count("all_to_all_v", send_counts[size_t(p)]);
    check_count("all_to_all_v", recv_counts[size_t(p)]);
    send_at[size_t(p)] = soff, recv_at[size_t(p)] = roff;
    soff += send_counts[size_t(p)], roff += recv_counts[size_t(p)];
  }
  KILN_CHECK(send_counts[size_t(me)] == recv_counts[size_t(me)], "all_to_all_v", "rank ", me,
             " sends itself ", send_counts[size_t(me)], " floats but expects ",
             recv_counts[size_t(me)]);
  for (int p = 0; p < P; ++p)
    if (p != me && recv_counts[size_t(p)] > 0)
      pending.push_back(recv_async(recv + recv_at[size_t(p)], recv_counts[size_t(p)], p, kTag));
  for (int p = 0; p < P; ++p)
    if (p != me && send_counts[size_t(p)] > 0)
      pending.push_back(send_async(send + send_at[size_t(p)], send_counts[size_t(p)], p, kTag));
  if (send_counts[size_t(me)] > 0)
    std::memcpy(recv + recv_at[size_t(me)], send + send_at[size_t(me)],
                size_t(send_counts[size_t(me)]) * sizeof(float));
  for (Request& r : pending) r.wait();
}

void SingleComm::all_to_all_v(const float* send, const std::vector<int64_t>& send_counts,
                              float* recv, const std::vector<int64_t>& recv_counts) {
  KILN_CHECK(send_counts.size() == 1 && recv_counts.size() == 1 &&
                 send_counts[0] == recv_counts[0],
             "all_to_all_v", "a 1-rank communicator sends itself what it receives");
  check_count("all_to_all_v", send_counts[0]);
  if (send_counts[0] > 0 && send != recv)
    std::memcpy(recv, send, size_t(send_counts[0]) * sizeof(float));
}

Request SingleComm::all_gather_async(const float* in, float* out, int64_t n_per_rank) {
  check_count("all_gather", n_per_rank);
  if (n_per_rank > 0 && in != out) std::memcpy(out, in, n_per_rank * sizeof(float));
  return {};
}

Request SingleComm::broadcast_async(float* data, int64_t n, int root) {
  check_count("broadcast", n);
  KILN_CHECK(root == 0, "broadcast", "root ", root, " is out of range for a 1-rank communicator");
  return {};
}

Request SingleComm::send_async(const float* data, int64_t n, int peer, int tag) {
  send(data, n, peer, tag);
  return {};
}

Request SingleComm::recv_async(float* data, int64_t n, int peer, int tag) {
  recv(data, n, peer, tag);
  return {};
}

void SingleComm::send(const float*, int64_t, int peer, int) {
  fail("send", "peer ", peer, " does not exist: a single-process communicator has no peers; ",
       "launch with mpirun -np N");
}

void SingleComm::recv(float*, int64_t, int peer, int) {
  fail("recv", "peer ", peer, " does not exist: a single-process communicator has no peers; ",
       "launch with mpirun -np N");
}

std::unique_ptr<Comm> SingleComm::split(int color, int key) {
  KILN_CHECK(color >= 0, "split", "color must be >= 0, got ", color);
  return std::make_unique<SingleComm>();
}

double all_reduce_sum(Comm& comm, double x) {
  if (comm.size() == 1) return x;
  float parts[2] = {float(x), float(x - double(float(x)))};
  comm.all_reduce(parts, 2);
  return double(parts[0]) + double(parts[1]);
}

std::vector<uint64_t> all_gather_exact(Comm& comm, uint64_t x) {
  float mine[3];
  for (int k = 0; k < 3; ++k) mine[k] = float((x >> (21 * k)) & ((1u << 21) - 1));
  std::vector<float> all(size_t(3) * comm.size());
  comm.all_gather(mine, all.data(), 3);
  std::vector<uint64_t> out(size_t(comm.size()), 0);
  for (size_t r = 0; r < out.size(); ++r)
    for (int k = 0; k < 3; ++k) out[r] |= uint64_t(all[3 * r + k]) << (21 * k);
  return out;
}

}  // namespace kiln::dist

// MpiComm across real processes. The gtest launches this same binary under
//   mpirun --oversubscribe -np {2,4}
// with KILN_MPI_CHILD=1; main() then runs run_child(): every collective (blocking and async),
// split sub-communicators, Megatron process groups and a send/recv ring, each result checked on
// every rank against the arithmetic. A rank that sees a mismatch exits non-zero, so mpirun does.
// To add a check: a block in run_child() that fills rank-dependent data and compares with expect().
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "kiln/core/error.h"

#ifdef KILN_HAVE_MPI
#include "kiln/dist/groups.h"
#include "kiln/dist/mpi_comm.h"

using namespace kiln::dist;

namespace {

int g_failures = 0;

// All values are small integers, exact in fp32, so results must match exactly.
void expect(const char* what, int rank, const std::vector<float>& got,
            const std::vector<float>& want) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (got.at(i) != want[i]) {
      std::fprintf(stderr, "[rank %d] %s: element %zu is %g, expected %g\n", rank, what, i,
                   double(got[i]), double(want[i]));
      ++g_failures;
      return;
    }
  }
}

// Collectives on one communicator c; `tag` names it in messages.
void check_collectives(Comm& c, const std::string& tag) {
  const int r = c.rank(), P = c.size();
  auto name = [&](const char* op) { return tag + " " + op; };
  const int64_t n = 1003;  // odd, not a multiple of any vector width

  // all_reduce sum / max / min, blocking; data (r+1)·(i+1).
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::max, ReduceOp::min}) {
    std::vector<float> a(n), want(n);
    for (int64_t i = 0; i < n; ++i) {
      a[i] = float((r + 1) * (i % 97 + 1));
      const float k = float(i % 97 + 1);
      want[i] = op == ReduceOp::sum ? k * P * (P + 1) / 2 : op == ReduceOp::max ? k * P : k;
    }
    c.all_reduce(a.data(), n, op);
    expect(name("all_reduce").c_str(), r, a, want);
  }
  // Two all_reduces in flight at once: b polled with test() until done, a waited after it.
  {
    std::vector<float> a(n, float(r)), b(n, 1.f);
    Request ra = c.all_reduce_async(a.data(), n);
    Request rb = c.all_reduce_async(b.data(), n);
    while (!rb.test()) {
    }
    if (!rb.test() || rb.pending()) {  // done stays done
      std::fprintf(stderr, "[rank %d] %s: Request::test() went back to pending\n", r, tag.c_str());
      ++g_failures;
    }
    ra.wait();
    expect(name("all_reduce_async a").c_str(), r, a, std::vector<float>(n, float(P * (P - 1) / 2)));
    expect(name("all_reduce_async b").c_str(), r, b, std::vector<float>(n, float(P)));
  }
  // reduce_scatter: block j of rank s holds s·1000 + j·10 + i%7; rank r gets block r summed.
  for (bool async : {false, true}) {
    const int64_t m = 5;
    std::vector<float> in(P * m), out(m, -1), want(m);
    for (int j = 0; j < P; ++j)
      for (int64_t i = 0; i < m; ++i) in[j * m + i] = float(r * 1000 + j * 10 + i % 7);
    for (int64_t i = 0; i < m; ++i) want[i] = float(1000 * P * (P - 1) / 2 + P * (r * 10 + i % 7));
    if (async) {
      Request q = c.reduce_scatter_async(in.data(), out.data(), m);
      q.wait();
    } else {
      c.reduce_scatter(in.data(), out.data(), m);
    }
    expect(name(async ? "reduce_scatter_async" : "reduce_scatter").c_str(), r, out, want);
  }
  // all_gather: rank s contributes s·100 + i.
  for (bool async : {false, true}) {
    const int64_t m = 7;
    std::vector<float> in(m), out(P * m, -1), want(P * m);
    for (int64_t i = 0; i < m; ++i) in[i] = float(r * 100 + i);
    for (int s = 0; s < P; ++s)
      for (int64_t i = 0; i < m; ++i) want[s * m + i] = float(s * 100 + i);
    if (async) {
      Request q = c.all_gather_async(in.data(), out.data(), m);
      q.wait();
    } else {
      c.all_gather(in.data(), out.data(), m);
    }
    expect(name(async ? "all_gather_async" : "all_gather").c_str(), r, out, want);
  }
  // broadcast from the last rank.
  for (bool async : {false, true}) {
    const int root = P - 1;
    std::vector<float> a(n, 0.f), want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = float(3 * (i % 101) + 1);
    if (r == root) a = want;
    if (async) {
      Request q = c.broadcast_async(a.data(), n, root);
      q.wait();
    } else {
      c.broadcast(a.data(), n, root);
    }
    expect(name(async ? "broadcast_async" : "broadcast").c_str(), r, a, want);
  }
  c.barrier();
}

// A ring: each rank sends r·10 + i to the next and receives from the previous.
void check_ring(Comm& c) {
  const int r = c.rank(), P = c.size(), next = (r + 1) % P, prev = (r + P - 1) % P;
  const int64_t n = 16;
  std::vector<float> out(n), in(n, -1), want(n);
  for (int64_t i = 0; i < n; ++i) {
    out[i] = float(r * 10 + i);
    want[i] = float(prev * 10 + i);
  }
  // Blocking: even ranks send first, odd ranks receive first, so the ring cannot deadlock.
  if (r % 2 == 0) {
    c.send(out.data(), n, next, 7);
    c.recv(in.data(), n, prev, 7);
  } else {
    c.recv(in.data(), n, prev, 7);
    c.send(out.data(), n, next, 7);
  }
  expect("ring send/recv", r, in, want);
  std::fill(in.begin(), in.end(), -1.f);
  Request rr = c.recv_async(in.data(), n, prev, 8);
  Request rs = c.send_async(out.data(), n, next, 8);
  rs.wait();
  rr.wait();
  expect("ring send_async/recv_async", r, in, want);
}

// split by parity, keyed in reverse: the sub-rank order follows the key.
void check_split(Comm& world) {
  const int r = world.rank(), P = world.size();
  auto sub = world.split(r % 2, -r);
  std::vector<float> members;
  for (int s = P - 1; s >= 0; --s)
    if (s % 2 == r % 2) members.push_back(float(s));  // descending: key -s
  if (sub->size() != int(members.size())) {
    std::fprintf(stderr, "[rank %d] split: size %d, expected %zu\n", r, sub->size(),
                 members.size());
    ++g_failures;
    return;
  }
  float me = float(r);
  std::vector<float> got(sub->size());
  sub->all_gather(&me, got.data(), 1);
  expect("split all_gather", r, got, members);
  check_collectives(*sub, "split(parity)");
}

// Every (tp, pp) layout of this world: group members from all_gather equal the plan's lists.
void check_groups(Comm& world) {
  const int P = world.size(), r = world.rank();
  for (int tp = 1; tp <= P; ++tp)
    for (int pp = 1; tp * pp <= P; ++pp) {
      if (P % (tp * pp) != 0) continue;
      ProcessGroups pg = make_groups(world, tp, pp);
      const std::string tag = "tp" + std::to_string(tp) + " pp" + std::to_string(pp);
      struct {
        Comm* c;
        const std::vector<int>* members;
        const char* name;
      } groups[] = {{pg.tp.get(), &pg.plan.tp_members, "tp"},
                    {pg.dp.get(), &pg.plan.dp_members, "dp"},
                    {pg.pp.get(), &pg.plan.pp_members, "pp"}};
      for (auto& g : groups) {
        float me = float(r);
        std::vector<float> got(g.c->size()), want(g.members->begin(), g.members->end());
        g.c->all_gather(&me, got.data(), 1);
        expect((tag + " " + g.name + " group members").c_str(), r, got, want);
      }
      check_collectives(*pg.tp, tag + " tp");
      check_collectives(*pg.dp, tag + " dp");
    }
}

int run_child(int argc, char** argv) {
  try {
    MpiRuntime mpi(&argc, &argv);
    {
      auto world = MpiComm::world();
      check_collectives(*world, "world");
      check_ring(*world);
      check_split(*world);
      check_groups(*world);
      // Rank-local argument errors throw before any communication.
      try {
        float x = 0;
        world->broadcast(&x, 1, world->size());
        std::fprintf(stderr, "[rank %d] broadcast to a bad root did not throw\n", world->rank());
        ++g_failures;
      } catch (const kiln::Error&) {
      }
      float f = float(g_failures);
      world->all_reduce(&f, 1);
      if (world->rank() == 0)
        std::printf("mpi collectives: %d failure(s) over %d ranks\n", int(f), world->size());
      std::fflush(stdout);
    }
    return g_failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    MpiRuntime::abort(2);  // the other ranks would wait in a collective forever
  }
}

// Runs a shell command; returns its exit status and its combined output.
int run(const std::string& cmd, std::string& output) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, k);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void launch(int np) {
  std::string out;
  ASSERT_EQ(run("command -v mpirun", out), 0)
      << "mpirun not found: install Open MPI with scripts/setup.sh (openmpi-bin libopenmpi-dev)";
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  // As root in a container with no ssh: shared-memory transport only, no remote launch agent.
  const std::string cmd =
      "KILN_MPI_CHILD=1 OMP_NUM_THREADS=1 timeout 20 mpirun --oversubscribe "
      "--allow-run-as-root --mca btl self,vader --mca plm_rsh_agent false "
      "-x KILN_MPI_CHILD -x OMP_NUM_THREADS -np " +
      std::to_string(np) + " '" + self + "'";
  out.clear();
  const int rc = run(cmd, out);
  EXPECT_EQ(rc, 0) << cmd << "\n" << out;
  EXPECT_NE(out.find("mpi collectives: 0 failure(s) over " + std::to_string(np) + " ranks"),
            std::string::npos)
      << out;
}

}  // namespace

TEST(MpiComm, CollectivesOn2Ranks) {
  launch(2);
}
TEST(MpiComm, CollectivesOn4Ranks) {
  launch(4);
}

int main(int argc, char** argv) {
  if (std::getenv("KILN_MPI_CHILD")) return run_child(argc, argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

#else  // built without MPI

TEST(MpiComm, Available) {
  FAIL() << "kiln_dist was built without MPI: install Open MPI with scripts/setup.sh and "
            "re-run cmake";
}

#endif

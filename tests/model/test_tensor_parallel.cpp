// Tensor parallelism in one process: the ranks are threads whose collectives meet at a barrier
// (ThreadComm below), so the shard arithmetic is checked without MPI. Scatter then gather must be
// the identity on the flat buffer; a training step of the shards (with and without sequence
// parallelism and recomputation) must give the full model's loss and, scattered, its gradients,
// with the replicated parameters' gradients bit-identical on every rank. Differences come from the
// order of fp32 sums over ranks only: losses agree to 1e-5 relative, gradients to 1e-4 of each
// tensor's largest magnitude.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/model/tensor_parallel.h"

namespace kiln {
namespace {

// A group of `n` ranks living in threads of this process.
struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), meet(n), bufs(n) {}
  int size;
  std::barrier<> meet;
  std::vector<const float*> bufs;  // each rank's input of the current collective
};

// Every collective publishes this rank's input, meets, reads the others', and meets again before
// anyone may touch its buffers. Reductions sum in rank order, so every rank gets the same bits.
class ThreadComm final : public dist::Comm {
 public:
  ThreadComm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size; }

  dist::Request all_reduce_async(float* data, int64_t n, dist::ReduceOp op) override {
    std::vector<float> out(n);
    collective(data, [&] {
      for (int64_t i = 0; i < n; ++i) out[i] = reduce(op, i);
    });
    std::copy(out.begin(), out.end(), data);
    return {};
  }
  dist::Request reduce_scatter_async(const float* in, float* out, int64_t n) override {
    collective(in, [&] {
      for (int64_t i = 0; i < n; ++i) out[i] = reduce(dist::ReduceOp::sum, rank_ * n + i);
    });
    return {};
  }
  dist::Request all_gather_async(const float* in, float* out, int64_t n) override {
    collective(in, [&] {
      for (int r = 0; r < g_.size; ++r) std::memcpy(out + r * n, g_.bufs[r], n * sizeof(float));
    });
    return {};
  }
  dist::Request broadcast_async(float* data, int64_t n, int root) override {
    std::vector<float> out(n);
    collective(data, [&] { std::memcpy(out.data(), g_.bufs[root], n * sizeof(float)); });
    std::copy(out.begin(), out.end(), data);
    return {};
  }
  dist::Request send_async(const float*, int64_t, int, int) override { unsupported(); }
  dist::Request recv_async(float*, int64_t, int, int) override { unsupported(); }
  void send(const float*, int64_t, int, int) override { unsupported(); }
  void recv(float*, int64_t, int, int) override { unsupported(); }
  void barrier() override { g_.meet.arrive_and_wait(); }
  std::unique_ptr<Comm> split(int, int) override { unsupported(); }

 private:
  [[noreturn]] static void unsupported() { fail("test", "ThreadComm has no point-to-point"); }
  template <typename F>
  void collective(const float* mine, F&& read) {
    g_.bufs[rank_] = mine;
    g_.meet.arrive_and_wait();
    read();
    g_.meet.arrive_and_wait();
  }
  float reduce(dist::ReduceOp op, int64_t i) const {
    float acc = g_.bufs[0][i];
    for (int r = 1; r < g_.size; ++r) {
      const float x = g_.bufs[r][i];
      acc = op == dist::ReduceOp::sum   ? acc + x
            : op == dist::ReduceOp::max ? std::max(acc, x)
                                        : std::min(acc, x);
    }
    return acc;
  }

  ThreadGroup& g_;
  int rank_;
};

// Llama with grouped-query attention (4 heads, 2 kv heads) and an untied head; GPT-2 with 6
// heads and tied embeddings. 97 vocabulary rows split unevenly over 2 and over 3 ranks.
ModelConfig config(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 97;
  c.layers = 2;
  c.head_dim = 8;
  c.heads = arch == Arch::llama ? 4 : 6;
  c.kv_heads = arch == Arch::llama ? 2 : 6;
  c.hidden = c.heads * c.head_dim;
  c.intermediate = 60;
  c.max_positions = 32;
  c.tie_embeddings = arch == Arch::gpt2;
  return c;
}

int tp_of(Arch arch) {
  return arch == Arch::llama ? 2 : 3;
}

TEST(TensorParallel, ScatterThenGatherIsTheIdentity) {
  for (Arch arch : {Arch::llama, Arch::gpt2}) {
    const ModelConfig cfg = config(arch);
    Model full(cfg);
    full.init_weights(5);
    const int tp = tp_of(arch);
    std::vector<float> back(full.num_params(), NAN);
    int64_t vocab_rows = 0;
    for (int r = 0; r < tp; ++r) {
      TensorParallelMap map(cfg, tp, r);
      Model shard(map.config());
      ASSERT_EQ(shard.num_params(), map.local_params());
      map.scatter(full.weights().f32(), shard.weights().f32());
      map.gather(shard.weights().f32(), back.data());
      EXPECT_EQ(map.config().heads, cfg.heads / tp);
      EXPECT_EQ(map.config().kv_heads, cfg.kv_heads / tp);
      EXPECT_EQ(map.config().intermediate, cfg.intermediate / tp);
      EXPECT_EQ(map.vocab_begin(), vocab_rows);
      vocab_rows += map.config().vocab_size;
    }
    EXPECT_EQ(vocab_rows, cfg.vocab_size);
    EXPECT_EQ(std::memcmp(back.data(), full.weights().f32(), back.size() * sizeof(float)), 0)
        << (arch == Arch::llama ? "llama" : "gpt2");
  }
}

TEST(TensorParallel, LayoutsThatDoNotSplitAreRefused) {
  auto message = [](const ModelConfig& c, int tp) -> std::string {
    try {
      shard_config(c, tp, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const ModelConfig llama = config(Arch::llama);
  EXPECT_NE(message(llama, 3).find("num_attention_heads = 4 is not divisible by parallel.tp = 3"),
            std::string::npos);
  EXPECT_NE(message(llama, 4).find("num_key_value_heads = 2 is not divisible"), std::string::npos);
  ModelConfig odd_ffn = llama;
  odd_ffn.intermediate = 61;
  EXPECT_NE(message(odd_ffn, 2).find("intermediate size 61"), std::string::npos);
}

struct StepResult {
  double loss = 0;
  std::vector<float> grads;
};

StepResult step(const Model& m, TrainOptions opt) {
  const int B = 2, T = 15;  // 30 rows: sequence parallelism splits them over 2 or 3 ranks
  TrainState ts(m, B, T, opt);
  const int V = opt.vocab_total > 0 ? opt.vocab_total : m.config().vocab_size;
  std::vector<int> ids(B * T), tg(B * T);
  Rng rng(4);
  for (int i = 0; i < B * T; ++i) {
    ids[i] = int(rng.below(V));
    tg[i] = i % 7 == 0 ? -1 : int(rng.below(V));
  }
  StepResult r{0, std::vector<float>(m.num_params(), 0.0f)};
  r.loss = ts.step(m, ids.data(), tg.data(), r.grads.data(), 0.5f);
  return r;
}

TEST(TensorParallel, ShardStepEqualsFullStep) {
  for (Arch arch : {Arch::llama, Arch::gpt2}) {
    const ModelConfig cfg = config(arch);
    Model full(cfg);
    full.init_weights(7);
    const int tp = tp_of(arch);
    for (bool sp : {false, true}) {
      for (Recompute rc : {Recompute::none, Recompute::full}) {
        const std::string what = std::string(arch == Arch::llama ? "llama" : "gpt2") +
                                 (sp ? " sp" : "") + " recompute " + name_of(rc);
        const TrainOptions base{Precision::fp32, rc, -1};
        const StepResult want = step(full, base);
        std::vector<StepResult> got(tp);
        std::vector<std::unique_ptr<TensorParallelMap>> maps(tp);
        std::vector<std::unique_ptr<Model>> shards(tp);
        for (int r = 0; r < tp; ++r) {
          maps[r] = std::make_unique<TensorParallelMap>(cfg, tp, r);
          shards[r] = std::make_unique<Model>(maps[r]->config());
          maps[r]->scatter(full.weights().f32(), shards[r]->weights().f32());
        }
        ThreadGroup group(tp);
        std::vector<std::thread> ranks;
        std::vector<std::string> errors(tp);
        for (int r = 0; r < tp; ++r) {
          ranks.emplace_back([&, r] {
            ThreadComm comm(group, r);
            try {
              got[r] = step(*shards[r], maps[r]->train_options(base, &comm, sp));
            } catch (const std::exception& e) {
              errors[r] = e.what();
            }
          });
        }
        for (auto& t : ranks) t.join();
        for (int r = 0; r < tp; ++r) ASSERT_EQ(errors[r], "") << what;
        for (int r = 0; r < tp; ++r) {
          EXPECT_NEAR(got[r].loss, want.loss, 1e-5 * want.loss) << what << " rank " << r;
          std::vector<float> expect(maps[r]->local_params());
          maps[r]->scatter(want.grads.data(), expect.data());
          for (const ParamInfo& p : shards[r]->params()) {
            double scale = 1e-30, diff = 0;
            for (int64_t i = p.offset; i < p.offset + p.numel(); ++i) {
              scale = std::max(scale, double(std::fabs(expect[i])));
              diff = std::max(diff, double(std::fabs(expect[i] - got[r].grads[i])));
            }
            EXPECT_LE(diff, 1e-4 * scale) << what << " rank " << r << " " << p.name;
            // Replicated parameters (same shape as in the full model) must stay in step.
            if (r > 0 && p.numel() == full.param(p.name).numel()) {
              const int64_t at0 = shards[0]->param(p.name).offset;  // vocabulary rows differ
              EXPECT_EQ(std::memcmp(got[r].grads.data() + p.offset, got[0].grads.data() + at0,
                                    p.numel() * sizeof(float)),
                        0)
                  << what << " rank " << r << " " << p.name << " differs from rank 0";
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kiln

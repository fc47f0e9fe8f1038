// ZeRO's shard math (layouts, padding, decay across cut parameters) and, in one process, every
// stage against the plain optimizer: with one rank the stages differ only in bookkeeping
// (pieces, gradient buffers, gathers through the hooks), so the weights must match bit for bit.
// The multi-rank oracle is tests/cli/test_train_zero.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/train/optimizer.h"
#include "kiln/train/zero.h"

namespace kiln {
namespace {

TEST(ZeroLayout, ChunksCoverTheBufferPaddedToDp) {
  const std::vector<int64_t> units{0, 37, 101, 102, 250, 251};  // odd sizes, a 1-element unit
  for (int dp : {1, 2, 3, 4, 7})
    for (int64_t bucket : {1, 5, 16, 64, 1000})
      for (bool merge : {false, true}) {
        ZeroLayout L = make_zero_layout(units, dp, bucket, merge);
        SCOPED_TRACE("dp " + std::to_string(dp) + " bucket " + std::to_string(bucket) +
                     (merge ? " merged" : ""));
        int64_t at = 0, shard = 0;
        for (const auto& c : L.chunks) {
          EXPECT_EQ(c.lo, at);
          EXPECT_GE(dp * c.n, c.len);
          EXPECT_LT(dp * c.n - c.len, dp);  // padding below one element per rank
          EXPECT_EQ(c.shard, shard);
          at += c.len;
          shard += c.n;
        }
        EXPECT_EQ(at, 251);
        EXPECT_EQ(L.shard_size, shard);
        int unit = 0;
        for (size_t gi = 0; gi < L.groups.size(); ++gi) {
          const auto& G = L.groups[gi];
          EXPECT_EQ(G.unit_lo, unit);
          unit = G.unit_hi;
          if (!merge) {
            EXPECT_EQ(G.unit_hi, G.unit_lo + 1);
          }
          int64_t padded = 0;
          for (int ci = G.chunk_lo; ci < G.chunk_hi; ++ci) {
            const auto& c = L.chunks[ci];
            // A group's buffer holds its elements contiguously: only the last chunk pads.
            if (ci + 1 < G.chunk_hi) {
              EXPECT_EQ(c.len, dp * c.n);
            }
            EXPECT_EQ(c.lo - G.lo, padded);
            padded += dp * c.n;
          }
          EXPECT_EQ(G.padded, padded);
          for (int u = G.unit_lo; u < G.unit_hi; ++u) EXPECT_EQ(L.group_of[u], int(gi));
        }
        EXPECT_EQ(unit, 5);
      }
  // Merged groups reach the bucket, counted from the end (backward order).
  ZeroLayout m = make_zero_layout(units, 2, 100, true);
  ASSERT_EQ(m.groups.size(), 2u);
  EXPECT_EQ(m.groups[1].unit_lo, 3);  // [102, 251): 149 >= 100
  EXPECT_EQ(m.groups[0].unit_hi, 3);
  EXPECT_THROW(make_zero_layout({0, 5, 5, 9}, 2, 4, false), Error);  // an empty unit
}

TEST(ZeroLayout, ShardPiecesCoverEveryElementOnceWithItsDecay) {
  // Parameters that chunk boundaries cut mid-way, decayed and not.
  std::vector<ParamInfo> params;
  int64_t off = 0;
  for (int i = 0; i < 9; ++i) {
    const int64_t n = 3 + 7 * i % 11;
    params.push_back({"p" + std::to_string(i), {n}, off, i % 3 != 0});
    off += n;
  }
  const int64_t P = off;
  for (int dp : {1, 2, 3, 4}) {
    ZeroLayout L = make_zero_layout({0, 10, 30, P}, dp, 6, true);
    std::vector<int> owner(P, -1);
    for (int r = 0; r < dp; ++r) {
      int64_t next_shard = -1;
      for (const ShardPiece& p : shard_pieces(L, params, r)) {
        EXPECT_GT(p.len, 0);
        if (next_shard >= 0) {
          EXPECT_GE(p.shard, next_shard);
        }
        next_shard = p.shard + p.len;
        EXPECT_LE(next_shard, L.shard_size);
        for (int64_t i = p.flat; i < p.flat + p.len; ++i) {
          EXPECT_EQ(owner[i], -1) << "element " << i << " owned twice";
          owner[i] = r;
          const ParamInfo* q = nullptr;
          for (const auto& pi : params)
            if (i >= pi.offset && i < pi.offset + pi.numel()) q = &pi;
          ASSERT_NE(q, nullptr);
          EXPECT_EQ(p.decay, q->decay) << "element " << i << " of " << q->name;
          // Inside a piece, shard and flat advance together, within the rank's chunk block.
          const int64_t s = p.shard + (i - p.flat);
          bool in_block = false;
          for (const auto& c : L.chunks)
            in_block |= s >= c.shard && s < c.shard + c.n && i == L.block_lo(c, r) + (s - c.shard);
          EXPECT_TRUE(in_block) << "element " << i << " at shard " << s;
        }
      }
    }
    for (int64_t i = 0; i < P; ++i) EXPECT_GE(owner[i], 0) << "element " << i << " unowned";
  }
}

// One process, several clipped steps through tiny buckets that cut parameters: every stage's
// weights and moments equal the plain AdamW's bit for bit. With gradient accumulation stages 2
// and 3 sum each micro-batch's gradients apart before adding them (the reduce-scatter sits in
// between), a different rounding order: equal to 1e-5 of each buffer's largest magnitude.
void expect_same(const Tensor& got, const Tensor& want, bool exact, const char* what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  if (exact) {
    EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << what;
    return;
  }
  double scale = 0, diff = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    scale = std::max(scale, double(std::fabs(want.f32()[i])));
    diff = std::max(diff, double(std::fabs(got.f32()[i] - want.f32()[i])));
  }
  EXPECT_LE(diff, 1e-5 * scale) << what;
}

TEST(ZeroAdamW, OneRankEveryStageMatchesAdamW) {
  for (int accum : {1, 2})
    for (bool tied : {false, true}) {
      ModelConfig c;
      c.arch = tied ? Arch::gpt2 : Arch::llama;
      c.hidden = 16, c.layers = 2, c.heads = 2, c.kv_heads = tied ? 2 : 1, c.head_dim = 8;
      c.intermediate = 32, c.vocab_size = 50, c.max_positions = 16, c.tie_embeddings = tied;
      const int B = 2, T = 8, steps = 3;
      std::vector<int> ids(size_t(B) * T * steps * accum), tg(ids.size());
      Rng rng(5);
      for (size_t i = 0; i < ids.size(); ++i) {
        ids[i] = int(rng.below(50));
        tg[i] = int(rng.below(50));
      }
      const AdamWConfig acfg{0.9f, 0.95f, 1e-8f, 0.1f};
      const float clip = 0.5f;  // below the norms here, so clipping is exercised
      Model ref(c);
      ref.init_weights(7);
      AdamW ref_opt(ref, acfg);
      {
        AdamW& opt = ref_opt;
        TrainState ts(ref, B, T);
        Tensor grads = Tensor::zeros({ref.num_params()});
        for (int s = 0; s < steps; ++s) {
          std::memset(grads.raw(), 0, grads.nbytes());
          for (int a = 0; a < accum; ++a) {
            const size_t o = size_t(s * accum + a) * B * T;
            ts.step(ref, ids.data() + o, tg.data() + o, grads.f32(), 1.0f / accum);
          }
          double norm = 0;
          ASSERT_TRUE(clip_and_step(ref, opt, grads.f32(), 1e-2f, clip, &norm));
          ASSERT_GT(norm, clip);
        }
      }
      for (int stage = 0; stage <= 3; ++stage) {
        SCOPED_TRACE("stage " + std::to_string(stage) + (tied ? " tied" : "") + " accum " +
                     std::to_string(accum));
        const bool exact = accum == 1 || stage < 2;
        Model model(c);
        model.init_weights(7);
        dist::SingleComm comm;
        TrainState ts(model, B, T);
        ZeroAdamW opt(model, comm, stage, 300 * 4.0 / (1 << 20), acfg);  // 300-float buckets
        EXPECT_GT(opt.layout().chunks.size(), 5u);
        for (int s = 0; s < steps; ++s) {
          opt.begin_step();
          for (int a = 0; a < accum; ++a) {
            opt.begin_micro(a == accum - 1);
            const size_t o = size_t(s * accum + a) * B * T;
            ts.step(model, ids.data() + o, tg.data() + o, opt, true, 1.0f / accum);
          }
          opt.finish_backward();
          double norm = 0;
          ASSERT_TRUE(opt.clip_and_step(1e-2f, clip, &norm));
        }
        std::unique_ptr<AdamW> whole = opt.gather_optimizer();
        opt.gather_weights();
        expect_same(model.weights(), ref.weights(), exact, "weights");
        ASSERT_NE(whole, nullptr);
        EXPECT_EQ(whole->steps(), steps);
        expect_same(whole->m(), ref_opt.m(), exact, "exp_avg");
        expect_same(whole->v(), ref_opt.v(), exact, "exp_avg_sq");
        // One rank: every stage holds the weights, the gradients and both moments once (S = P);
        // stage 1 also the reduced gradient shard (S) beside its whole one (P + dp tail).
        const int64_t extra = stage == 1 ? 4 * (opt.layout().shard_size + 1) : 0;
        EXPECT_EQ(opt.state_bytes(), 16 * ref.num_params() + extra);
      }
    }
}

}  // namespace
}  // namespace kiln

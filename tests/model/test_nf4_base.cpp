// Nf4Base (model/nf4_base.h): which weights it holds, fused ranges dequantized as their parts,
// the fp32 copies given back to the system (resident pages counted, not timed), and a clear
// refusal of a model NF4 cannot hold.
#include "kiln/model/nf4_base.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "kiln/model/transformer.h"
#include "model_test_util.h"

namespace kiln {
namespace {

int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

ModelConfig llama(int hidden, int intermediate) {
  ModelConfig c = test::tiny(Arch::llama);
  c.hidden = hidden;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = hidden / 4;
  c.intermediate = intermediate;
  return c;
}

TEST(Nf4Base, HoldsEveryProjectionAndNothingElse) {
  Model m(llama(64, 128));
  m.init_weights(1);
  const Nf4Base q(m);
  int64_t linear = 0;
  for (const ParamInfo& p : m.params()) {
    const bool proj = p.name.find("_proj.weight") != std::string::npos;
    EXPECT_EQ(q.holds(p.offset), proj) << p.name;
    if (proj) linear += p.numel();
  }
  EXPECT_EQ(q.numel(), linear);
  // q|k|v back to back dequantize as one range, equal to each part's own.
  const ParamInfo& qp = m.param("model.layers.1.self_attn.q_proj.weight");
  const ParamInfo& vp = m.param("model.layers.1.self_attn.v_proj.weight");
  const int64_t n = vp.offset + vp.numel() - qp.offset;
  std::vector<float> fused(n), part(vp.numel());
  q.dequantize(qp.offset, n, fused.data());
  q.dequantize(vp.offset, vp.numel(), part.data());
  EXPECT_EQ(std::memcmp(fused.data() + (vp.offset - qp.offset), part.data(), part.size() * 4), 0);
  // Dequantized weights are near the originals: NF4's error is at most half a level gap (0.16)
  // of the block absmax.
  const float* w = m.weights().f32() + qp.offset;
  for (int64_t i = 0; i < qp.numel(); ++i) EXPECT_NEAR(fused[i], w[i], 0.03) << i;
}

TEST(Nf4Base, ReleasesTheFp32CopiesOfWhatItHolds) {
  Model m(llama(512, 1024));
  m.init_weights(1);
  const Nf4Base q(m);
  const int64_t before = resident_bytes();
  q.release_fp32(m);
  const int64_t freed = before - resident_bytes();
  EXPECT_GT(freed, 0.9 * 4 * double(q.numel())) << "freed " << freed << " of " << 4 * q.numel();
  EXPECT_LT(8.0 * double(q.bytes()) / double(q.numel()), 4.13);
  const ParamInfo& down = m.param("model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(m.weights().f32()[down.offset + 5], 0.0f);
  q.restore_fp32(m);
  EXPECT_NE(m.weights().f32()[down.offset + 5], 0.0f);
}

TEST(Nf4Base, RefusesWeightsThatAreNotWholeBlocks) {
  ModelConfig c = test::tiny(Arch::llama);
  c.hidden = 24;  // k_proj: 12 x 24 = 288 values
  c.head_dim = 6;
  Model odd(c);
  const std::string msg = test::error_of([&] { Nf4Base q(odd); });
  EXPECT_NE(msg.find("not a multiple of 64"), std::string::npos) << msg;
  EXPECT_NE(msg.find("method: lora"), std::string::npos) << msg;
}

}  // namespace
}  // namespace kiln

// The block encoders of quant/kquant_write.cpp against ggml itself: for every format and every
// input of kquant_cases.h (random, all-zero, constant, one outlier, negative-only, fp16-underflow,
// below GROUP_MAX_EPS, sparse, near fp16's max) the hash of kiln's bytes equals the hash of the
// bytes ggml_quantize_chunk wrote (llama.cpp de3ff81, the build bench/build_llama_server.sh makes;
// tests/quant/ggml_quant_oracle.c printed the table below, and prints any encoding in hex).
// Then the round trip: error bounds per format, and more bits never worse.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/error.h"
#include "kiln/quant/qtensor.h"
#include "kquant_cases.h"

using namespace kiln;
using namespace kiln::quant;

namespace {

struct OracleRow {
  QType type;
  const char* input;
  uint64_t fnv1a;  // of ggml's encoding of the input
};

// Printed by tests/quant/ggml_quant_oracle.c (see its header for the command).
const OracleRow kOracle[] = {
    {QType::q8_0, "random", 0x2e382e05bcc9d987ull},
    {QType::q8_0, "zero", 0xb20a3b9d2c8df865ull},
    {QType::q8_0, "constant", 0xebff611f9ad6b3a5ull},
    {QType::q8_0, "outlier", 0xd14320e9a9f21b00ull},
    {QType::q8_0, "negative", 0x0c41a33abd763169ull},
    {QType::q8_0, "tiny", 0xeaffc6b50a0747b5ull},
    {QType::q8_0, "subeps", 0x5f12bfe57f944adaull},
    {QType::q8_0, "sparse", 0x5b8cc342e5abf2b5ull},
    {QType::q8_0, "large", 0x03e3bf0c81af2162ull},
    {QType::q4_0, "random", 0x116455a1599a5dffull},
    {QType::q4_0, "zero", 0xc299a5d3a00b6465ull},
    {QType::q4_0, "constant", 0x4e88788a5a9d0165ull},
    {QType::q4_0, "outlier", 0xf6733de47c77a30dull},
    {QType::q4_0, "negative", 0xa0c1320b30e5bf84ull},
    {QType::q4_0, "tiny", 0x6350b797cd683565ull},
    {QType::q4_0, "subeps", 0xf79a1e2653765297ull},
    {QType::q4_0, "sparse", 0xc70c4cbd3b0f8dedull},
    {QType::q4_0, "large", 0x8e2ea126a30f91e9ull},
    {QType::q4_1, "random", 0x7e3a898843d9d37full},
    {QType::q4_1, "zero", 0x81b169c331cabfa5ull},
    {QType::q4_1, "constant", 0x654d60af107c8745ull},
    {QType::q4_1, "outlier", 0x5d81ec1255096110ull},
    {QType::q4_1, "negative", 0x7945c9ec570275dcull},
    {QType::q4_1, "tiny", 0x845fc61e850d3419ull},
    {QType::q4_1, "subeps", 0x74c01654bab16cc2ull},
    {QType::q4_1, "sparse", 0x088afc7724c9dbebull},
    {QType::q4_1, "large", 0x1261c0a22a3b7486ull},
    {QType::q5_0, "random", 0xcf8344afdd5bc633ull},
    {QType::q5_0, "zero", 0xd6ee60b70a3a8745ull},
    {QType::q5_0, "constant", 0xa66c750e363602a5ull},
    {QType::q5_0, "outlier", 0x3afe7ac75cfc0c93ull},
    {QType::q5_0, "negative", 0x5794bfe8de7ba723ull},
    {QType::q5_0, "tiny", 0x5a2766683c58859cull},
    {QType::q5_0, "subeps", 0x104225da8fe94e51ull},
    {QType::q5_0, "sparse", 0xa966c19f294e87aeull},
    {QType::q5_0, "large", 0x25141a98b4053c31ull},
    {QType::q5_1, "random", 0xc50a192eef46e42dull},
    {QType::q5_1, "zero", 0xab0c262759a1d225ull},
    {QType::q5_1, "constant", 0x3b6a34812b81d485ull},
    {QType::q5_1, "outlier", 0x14ed2e86dfc38d9aull},
    {QType::q5_1, "negative", 0xc4fad610f9a1e4faull},
    {QType::q5_1, "tiny", 0x1aef1eb1b2782549ull},
    {QType::q5_1, "subeps", 0xb1bc382d129dfd24ull},
    {QType::q5_1, "sparse", 0xabeab8c6b4a738e6ull},
    {QType::q5_1, "large", 0xc89c144a82265d23ull},
    {QType::q2_k, "random", 0x409101848f04a66bull},
    {QType::q2_k, "zero", 0x6975f1271857fe35ull},
    {QType::q2_k, "constant", 0x75d65337d82f4093ull},
    {QType::q2_k, "outlier", 0x6c39cb69a3f99a36ull},
    {QType::q2_k, "negative", 0xb8af5d253bf41f9cull},
    {QType::q2_k, "tiny", 0x830d49e9b8f43e7eull},
    {QType::q2_k, "subeps", 0x7778285b3f6094b1ull},
    {QType::q2_k, "sparse", 0x481320c07d26172eull},
    {QType::q2_k, "large", 0x14e5b59e1c7f57b6ull},
    {QType::q3_k, "random", 0xb888353e0049e67cull},
    {QType::q3_k, "zero", 0x76c519d78418065dull},
    {QType::q3_k, "constant", 0x79cbd8d786aa2c66ull},
    {QType::q3_k, "outlier", 0x79a9140169ae9a4dull},
    {QType::q3_k, "negative", 0xca838ddf038139a3ull},
    {QType::q3_k, "tiny", 0xff8517d767aa21ecull},
    {QType::q3_k, "subeps", 0x76c519d78418065dull},
    {QType::q3_k, "sparse", 0xa27995eb3d47b9b5ull},
    {QType::q3_k, "large", 0x1b8e3d213895e809ull},
    {QType::q4_k, "random", 0xf30fe794ffe78ea6ull},
    {QType::q4_k, "zero", 0xec32669a74fcae65ull},
    {QType::q4_k, "constant", 0xfb1f3af61b591579ull},
    {QType::q4_k, "outlier", 0xd8fd3aea713b5e1cull},
    {QType::q4_k, "negative", 0xd5fcf1b21753a481ull},
    {QType::q4_k, "tiny", 0xed20636330de1fb8ull},
    {QType::q4_k, "subeps", 0x6e75341bf94fb6dfull},
    {QType::q4_k, "sparse", 0x0a3c48140ef56d19ull},
    {QType::q4_k, "large", 0xcd314714015357f8ull},
    {QType::q5_k, "random", 0xe73fec3ee161f996ull},
    {QType::q5_k, "zero", 0xad7f8afd9dfb20e5ull},
    {QType::q5_k, "constant", 0x95bcedf9ee2e7e76ull},
    {QType::q5_k, "outlier", 0x37c3aebec52e8f40ull},
    {QType::q5_k, "negative", 0xa176c2f1f1f674f5ull},
    {QType::q5_k, "tiny", 0x89060e7ce4bee7cfull},
    {QType::q5_k, "subeps", 0x4bcdd9e449fd4f1eull},
    {QType::q5_k, "sparse", 0x65e19221e356d713ull},
    {QType::q5_k, "large", 0x13a9d4f9bd859a3cull},
    {QType::q6_k, "random", 0x77f32e3c38595d68ull},
    {QType::q6_k, "zero", 0x51d8f4040b006a2dull},
    {QType::q6_k, "constant", 0x8dc0c6db46069547ull},
    {QType::q6_k, "outlier", 0xaf3979de4559a380ull},
    {QType::q6_k, "negative", 0x67303728ea676e2eull},
    {QType::q6_k, "tiny", 0xacf8a0a86133e5e6ull},
    {QType::q6_k, "subeps", 0x51d8f4040b006a2dull},
    {QType::q6_k, "sparse", 0x46c8014a47ce7878ull},
    {QType::q6_k, "large", 0x098c34e657b14366ull},
    {QType::q8_k, "random", 0xf78b72bd36a2ab0full},
    {QType::q8_k, "zero", 0x692a29ae120a2275ull},
    {QType::q8_k, "constant", 0xe7ccca288c818452ull},
    {QType::q8_k, "outlier", 0x2ef6a420453955abull},
    {QType::q8_k, "negative", 0x464f85a16c5d093eull},
    {QType::q8_k, "tiny", 0xd741ae538f6aa396ull},
    {QType::q8_k, "subeps", 0xe54ebc4bf89ece90ull},
    {QType::q8_k, "sparse", 0x5a9712fee16b039eull},
    {QType::q8_k, "large", 0x83e60ae6c5f761e4ull},
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected kiln::Error";
  return "";
}

std::vector<float> input(int c) {
  std::vector<float> x(size_t(kq_case_len(c)));
  kq_case_fill(c, x.data());
  return x;
}

int case_of(const std::string& name) {
  for (int c = 0; c < KQ_CASES; ++c)
    if (name == kq_case_names[c]) return c;
  ADD_FAILURE() << "no input named " << name;
  return 0;
}

std::string hex(const std::vector<uint8_t>& b) {
  std::string s;
  char buf[4];
  for (size_t i = 0; i < b.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%02x", b[i]);
    s += buf;
    if (i % 32 == 31) s += '\n';
  }
  return s;
}

TEST(KquantWrite, BytesEqualGgmlsQuantizer) {
  int checked = 0;
  for (const OracleRow& row : kOracle) {
    const int c = case_of(row.input);
    const std::vector<float> x = input(c);
    const QTensor q = quantize(x.data(), 1, int(x.size()), row.type);
    EXPECT_EQ(kq_fnv1a(q.data.data(), q.data.size()), row.fnv1a)
        << qtype_name(row.type) << " of '" << row.input
        << "' differs from ggml's; compare with `ggml_quant_oracle " << qtype_name(row.type) << " "
        << row.input << "`. kiln wrote:\n"
        << hex(q.data);
    ++checked;
  }
  EXPECT_EQ(checked, 11 * KQ_CASES);  // every format, every input
}

// Blocks never span rows: (4, 256) rows encode as the 4 super-blocks of one 1024-value row.
TEST(KquantWrite, RowsAreIndependent) {
  const std::vector<float> x = input(KQ_RANDOM);
  for (int t = 0; t <= int(QType::q8_k); ++t) {
    const QType type = QType(t);
    EXPECT_EQ(quantize(x.data(), 4, 256, type).data, quantize(x.data(), 1, 1024, type).data)
        << qtype_name(type);
  }
}

TEST(KquantWrite, RejectsRowsNotMultipleOfTheBlock) {
  std::vector<float> x(2 * 288, 1.0f);
  const std::string e = error_of([&] { quantize(x.data(), 2, 288, QType::q4_k); });
  EXPECT_NE(e.find("multiple of 256"), std::string::npos) << e;
  EXPECT_NE(e.find("q5_0"), std::string::npos) << e;  // names the 32-value fallback
  EXPECT_NO_THROW(quantize(x.data(), 2, 288, QType::q5_0));
}

// Round trip on bell-shaped data of one scale (values within +-0.63): per format, the RMS error
// against the RMS error of plain round-to-nearest over each group's own range with the format's
// 2^bits levels (Delta / sqrt(12), Delta = range / (2^bits - 1)). The fitted formats stay within
// a small factor of it (q2_k's 2-bit fit minimises |error| weighted by |x|, not RMS; the K-quants
// also round each group's scale to 6 bits and d to fp16).
TEST(KquantWrite, RoundTripErrorBounds) {
  const int n = 64 * 256;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) x[size_t(i)] = float(kq_bell(uint32_t(i) + 77777u)) * 1e-7f;
  struct Bound {
    QType type;
    int group, bits;
    double factor;  // allowed RMS error / plain round-to-nearest's
  };
  const Bound bounds[] = {
      {QType::q8_0, 32, 8, 1.25}, {QType::q4_0, 32, 4, 1.25},  {QType::q4_1, 32, 4, 1.25},
      {QType::q5_0, 32, 5, 1.25}, {QType::q5_1, 32, 5, 1.25},  {QType::q2_k, 16, 2, 1.25},
      {QType::q3_k, 16, 3, 1.25}, {QType::q4_k, 32, 4, 1.25},  {QType::q5_k, 32, 5, 1.25},
      {QType::q6_k, 16, 6, 1.25}, {QType::q8_k, 256, 8, 1.25},
  };
  double prev_k = 1e30;
  for (const Bound& b : bounds) {
    const QTensor q = quantize(x.data(), 1, n, b.type);
    dequantize(q, y.data());
    double err2 = 0, naive2 = 0;
    for (int g = 0; g < n; g += b.group) {
      float lo = x[size_t(g)], hi = lo;
      for (int i = g; i < g + b.group; ++i) {
        lo = std::min(lo, x[size_t(i)]);
        hi = std::max(hi, x[size_t(i)]);
        err2 += double(y[size_t(i)] - x[size_t(i)]) * (y[size_t(i)] - x[size_t(i)]);
      }
      const double delta = double(hi - lo) / ((1 << b.bits) - 1);
      naive2 += delta * delta / 12 * b.group;
    }
    const double rms = std::sqrt(err2 / n), naive = std::sqrt(naive2 / n);
    EXPECT_LE(rms, b.factor * naive)
        << qtype_name(b.type) << ": rms " << rms << ", naive " << naive;
    std::printf("%s: rms error %.3g, plain rounding %.3g\n",
                std::string(qtype_name(b.type)).c_str(), rms, naive);
    if (b.type >= QType::q2_k && b.type <= QType::q6_k) {  // more bits, less error
      EXPECT_LT(rms, prev_k) << qtype_name(b.type);
      prev_k = rms;
    }
  }
}

// The awkward inputs decode sensibly: zeros to zeros, a constant to within half a step of itself,
// and the outlier to itself within its format's step.
TEST(KquantWrite, AwkwardInputsRoundTrip) {
  for (int t = 0; t <= int(QType::q8_k); ++t) {
    const QType type = QType(t);
    std::vector<float> y(256);
    for (int c : {KQ_ZERO, KQ_SUBEPS}) {
      const std::vector<float> x = input(c);
      dequantize(quantize(x.data(), 1, 256, type), y.data());
      for (int i = 0; i < 256; ++i)
        ASSERT_LE(std::fabs(y[size_t(i)]), 1e-15f) << qtype_name(type) << " " << kq_case_names[c];
    }
    const std::vector<float> k = input(KQ_CONSTANT);
    dequantize(quantize(k.data(), 1, 256, type), y.data());
    for (int i = 0; i < 256; ++i)
      ASSERT_NEAR(y[size_t(i)], 0.37f, 0.37f / 7) << qtype_name(type) << " constant";
    const std::vector<float> o = input(KQ_OUTLIER);
    dequantize(quantize(o.data(), 1, 256, type), y.data());
    ASSERT_NEAR(y[77], 1000.0f, 1000.0f / 3) << qtype_name(type) << " outlier";
  }
}

}  // namespace

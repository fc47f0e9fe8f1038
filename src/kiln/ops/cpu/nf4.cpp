// NF4 with double quantization (ops/nf4.h). Built with -ffp-contract=off: every product and sum
// rounds to fp32 on its own, as in PyTorch, so the oracle's bytes match.
#include "kiln/ops/nf4.h"

#include <algorithm>
#include <cmath>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"

namespace kiln::ops {

const float kNf4Levels[16] = {-1.0f,
                              -0.6961928009986877f,
                              -0.5250730514526367f,
                              -0.39491748809814453f,
                              -0.28444138169288635f,
                              -0.18477343022823334f,
                              -0.09105003625154495f,
                              0.0f,
                              0.07958029955625534f,
                              0.16093020141124725f,
                              0.24611230194568634f,
                              0.33791524171829224f,
                              0.44070982933044434f,
                              0.5626170039176941f,
                              0.7229568362236023f,
                              1.0f};

namespace {

// torch.linspace(0.1, 1, n) in fp32 as PyTorch's CPU kernel computes it (x86, AVX2 build): a
// value is start + step * i below the halfway index and end - step * (n - 1 - i) from it, fused
// (one rounding); whole chunks of 16 come as two vectors of 8 lanes base + k * step (two
// roundings) from their first value.
std::vector<float> torch_linspace(float start, float end, int n) {
  const float step = (end - start) / float(n - 1);
  auto at = [&](int i) {
    return i < n / 2 ? std::fmaf(step, float(i), start) : std::fmaf(-step, float(n - 1 - i), end);
  };
  std::vector<float> v(n);
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int half = 0; half < 16; half += 8) {
      const float base = at(i + half);
      for (int k = 0; k < 8; ++k) v[i + half + k] = base + float(k) * step;
    }
  for (; i < n; ++i) v[i] = at(i);
  return v;
}

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for each
// exponent e = 0..6, the 2^e midpoints of torch.linspace(0.1, 1, 2^e + 1), times +-10^(e-6)
// (rounded to fp32 first); plus 0 and 1; sorted.
std::array<float, 256> build_dynamic_map() {
  std::vector<float> v;
  for (int e = 0; e < 7; ++e) {
    const int n = (1 << e) + 1;
    const std::vector<float> b = torch_linspace(0.1f, 1.0f, n);
    const float scale = float(std::pow(10.0, e - 6));
    for (int k = 0; k + 1 < n; ++k) v.push_back(scale * ((b[k] + b[k + 1]) / 2.0f));
    for (int k = 0; k + 1 < n; ++k) v.push_back(-scale * ((b[k] + b[k + 1]) / 2.0f));
  }
  v.push_back(0.0f);
  v.push_back(1.0f);
  std::sort(v.begin(), v.end());
  std::array<float, 256> m{};
  std::copy(v.begin(), v.end(), m.begin());
  return m;
}

// The index of the value of `levels` (n of them) nearest to x; ties to the lower index.
int nearest(const float* levels, int n, float x) {
  int best = 0;
  float bd = std::fabs(x - levels[0]);
  for (int i = 1; i < n; ++i) {
    const float d = std::fabs(x - levels[i]);
    if (d < bd) bd = d, best = i;
  }
  return best;
}

// Quantizes v (n values) in blocks of `block` to the nearest of `levels` times the block's
// absmax: the codes, and each block's absmax. An all-zero block codes every value as `zero`.
template <class Code>
void absmax_quantize(const float* v, int64_t n, int block, const float* levels, int nlevels,
                     Code* codes, float* absmax) {
  const int zero = nearest(levels, nlevels, 0.0f);
  parallel_ranges((n + block - 1) / block, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * block, i1 = std::min(n, i0 + block);
      float m = 0;
      for (int64_t i = i0; i < i1; ++i) m = std::max(m, std::fabs(v[i]));
      absmax[b] = m;
      for (int64_t i = i0; i < i1; ++i)
        codes[i] = Code(m > 0 ? nearest(levels, nlevels, v[i] / m) : zero);
    }
  });
}

}  // namespace

float Nf4Tensor::block_absmax(int64_t b) const {
  return dynamic_map()[scale_codes[b]] * nested_absmax[b / kNf4ScaleBlock] + offset;
}

const std::array<float, 256>& dynamic_map() {
  static const std::array<float, 256> m = build_dynamic_map();
  return m;
}

Nf4Tensor nf4_quantize(const float* x, int64_t n) {
  KILN_CHECK(n > 0 && n % kNf4Block == 0, "nf4", n, " values are not whole blocks of ", kNf4Block,
             ": NF4 needs tensors whose size is a multiple of ", kNf4Block);
  Nf4Tensor q;
  q.numel = n;
  const int64_t nb = n / kNf4Block;
  std::vector<uint8_t> levels(n);
  std::vector<float> absmax(nb);
  absmax_quantize(x, n, kNf4Block, kNf4Levels, 16, levels.data(), absmax.data());
  q.codes.resize(n / 2);
  for (int64_t i = 0; i < n / 2; ++i) q.codes[i] = uint8_t(levels[2 * i] << 4 | levels[2 * i + 1]);
  // Double quantization: absmax - mean in blocks of 256 on the dynamic map.
  double sum = 0;
  for (float a : absmax) sum += a;
  q.offset = float(sum / double(nb));
  for (float& a : absmax) a -= q.offset;
  q.scale_codes.resize(nb);
  q.nested_absmax.resize((nb + kNf4ScaleBlock - 1) / kNf4ScaleBlock);
  absmax_quantize(absmax.data(), nb, kNf4ScaleBlock, dynamic_map().data(), 256,
                  q.scale_codes.data(), q.nested_absmax.data());
  return q;
}

namespace {

template <class Out, class Convert>
void dequantize_range(const Nf4Tensor& q, int64_t begin, int64_t n, Out* out, Convert convert) {
  KILN_CHECK(
      begin >= 0 && n >= 0 && begin % kNf4Block == 0 && n % kNf4Block == 0 && begin + n <= q.numel,
      "nf4", "range [", begin, ", ", begin + n, ") is not whole blocks of a tensor of ", q.numel,
      " values");
  parallel_ranges(n / kNf4Block, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t gb = begin / kNf4Block + b;
      const float s = q.block_absmax(gb);
      float level[16];
      for (int i = 0; i < 16; ++i) level[i] = kNf4Levels[i] * s;
      const uint8_t* c = q.codes.data() + gb * (kNf4Block / 2);
      Out* o = out + b * kNf4Block;
      for (int i = 0; i < kNf4Block / 2; ++i) {
        o[2 * i] = convert(level[c[i] >> 4]);
        o[2 * i + 1] = convert(level[c[i] & 15]);
      }
    }
  });
}

}  // namespace

void nf4_dequantize(const Nf4Tensor& q, int64_t begin, int64_t n, float* out) {
  dequantize_range(q, begin, n, out, [](float v) { return v; });
}

void nf4_dequantize_bf16(const Nf4Tensor& q, int64_t begin, int64_t n, uint16_t* out) {
  dequantize_range(q, begin, n, out, [](float v) { return f32_to_bf16(v); });
}

}  // namespace kiln::ops

// Fused multi-tensor AdamW on the GPU (contract: ops/adamw.h; the math of ops/ref/adamw.cpp,
// torch.optim.AdamW). One launch over every segment: the segments are cut into chunks of
// kChunk elements that never straddle two segments, one block per chunk, so a block knows its
// decay from one table entry. Each element is touched once: 4 floats read (param, grad, m, v),
// 3 written, plus 2 bytes for the optional bf16 copy.
//
// The fp32 operations are written with __f*_rn intrinsics, one per torch tensor op and in torch's
// order, so nvcc cannot fuse them into FMAs: the result is the reference's bit for bit wherever
// the host compiler did not contract the reference's expressions either.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/cuda/k_common.cuh"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 16 * kThreads;  // elements per block

// One chunk of one segment: elements [begin, begin + n) of the flat buffers.
struct AdamWChunk {
  int64_t begin;
  int32_t n;
  int32_t decay;
};
static_assert(sizeof(AdamWChunk) == 16, "AdamWChunk is read as one 16-byte word");

// The step's scalars, computed on the host as the reference does (double, then fp32).
struct AdamWScalars {
  float decay, step_size, bc2_sqrt, beta1_c, beta2, beta2_c, eps, grad_mul;
};

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v,
                             const AdamWChunk* chunks, AdamWScalars k, bf16* param_bf16) {
  const AdamWChunk c = chunks[blockIdx.x];
  const float decay = c.decay ? k.decay : 1.0f;
  for (int i = threadIdx.x; i < c.n; i += blockDim.x) {
    const int64_t at = c.begin + i;
    const float g = __fmul_rn(grad[at], k.grad_mul);
    float p = param[at], mi = m[at], vi = v[at];
    p = __fmul_rn(p, decay);                                     // param.mul_(1-lr*wd)
    mi = __fadd_rn(mi, __fmul_rn(k.beta1_c, __fsub_rn(g, mi)));  // m.lerp_(g, 1-b1)
    // v.mul_(b2).addcmul_(g, g, 1 - b2)
    vi = __fadd_rn(__fmul_rn(vi, k.beta2), __fmul_rn(__fmul_rn(k.beta2_c, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), k.bc2_sqrt), k.eps);
    p = __fsub_rn(p, __fmul_rn(k.step_size, __fdiv_rn(mi, denom)));  // addcdiv_(m, denom, -step)
    param[at] = p, m[at] = mi, v[at] = vi;
    if (param_bf16) param_bf16[at] = __ushort_as_bfloat16(kern::f32_to_bf16_bits(p));
  }
}

}  // namespace

AdamWSegments::AdamWSegments(const AdamWSegment* segs, int count, cudaStream_t s) {
  const char* op = "cuda AdamWSegments";
  KILN_CHECK(count >= 0, op, "segment count must be >= 0, got ", count);
  std::vector<AdamWChunk> table;
  int64_t end = 0;
  for (int i = 0; i < count; ++i) {
    const AdamWSegment& g = segs[i];
    KILN_CHECK(g.n >= 0 && g.offset >= end, op, "segment ", i, " (offset ", g.offset, ", n ", g.n,
               ") must have n >= 0 and start at or after the previous segment's end ", end,
               ": list the segments in order, without overlap");
    KILN_CHECK(g.decay == 0 || g.decay == 1, op, "segment ", i, " has decay ", g.decay,
               "; it must be 0 or 1");
    for (int64_t b = 0; b < g.n; b += kChunk)
      table.push_back({g.offset + b, int32_t(std::min(kChunk, g.n - b)), g.decay});
    end = g.offset + g.n;
  }
  KILN_CHECK(table.size() < (size_t(1) << 31), op, "too many elements (", end, ")");
  count_ = count;
  total_ = end;
  chunks_ = int(table.size());
  if (chunks_ > 0)
    dev_ = upload(reinterpret_cast<const uint8_t*>(table.data()),
                  int64_t(table.size() * sizeof(AdamWChunk)), s, op);
}

void adamw_step(float* param, const float* grad, float* m, float* v, const AdamWSegments& segs,
                const ops::AdamWParams& p, float grad_mul, bf16* param_bf16, cudaStream_t s) {
  const char* op = "cuda adamw_step";
  KILN_CHECK(p.step >= 1, op, "step must be >= 1 (1-based, for bias correction), got ", p.step);
  if (segs.chunks() == 0) return;
  // As ops/ref/adamw.cpp: Python's scalars in double, used as fp32.
  const double bc1 = 1.0 - std::pow(double(p.beta1), double(p.step));
  const double bc2 = 1.0 - std::pow(double(p.beta2), double(p.step));
  AdamWScalars k;
  k.decay = float(1.0 - double(p.lr) * p.weight_decay);
  k.step_size = float(p.lr / bc1);
  k.bc2_sqrt = float(std::sqrt(bc2));
  k.beta1_c = float(1.0 - p.beta1);
  k.beta2 = p.beta2;
  k.beta2_c = float(1.0 - p.beta2);
  k.eps = p.eps;
  k.grad_mul = grad_mul;
  adamw_kernel<<<unsigned(segs.chunks()), kThreads, 0, s>>>(
      param, grad, m, v, static_cast<const AdamWChunk*>(segs.device()), k, param_bf16);
  check_launch(op);
}

}  // namespace kiln::cuda

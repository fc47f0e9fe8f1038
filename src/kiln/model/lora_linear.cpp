#include "kiln/model/lora_linear.h"

#include "kiln/core/parallel.h"
#include "kiln/ops/matmul.h"
#include "kiln/ops/matmul_bf16.h"

namespace kiln {

namespace {

namespace cpu = ops::cpu;

// Whether element i of the slot's input survives dropout at rate p (a counter-based hash, so any
// pass of the same step draws the same mask).
inline bool keep(uint64_t key, int64_t i, float p) {
  uint64_t z = key + uint64_t(i) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(z >> 40) * (1.0f / 16777216.0f) >= p;
}

uint64_t mask_key(const LoraSlot& slot, const LoraTerm& t) {
  return t.seed * 0xd1342543de82ef95ull + uint64_t(slot.a);
}

// d(x) into scratch.xd, or x itself without dropout.
const float* dropout(const LoraSlot& slot, const LoraTerm& t, const float* x, int N,
                     LoraScratch& s) {
  if (t.dropout <= 0) return x;
  const int64_t n = int64_t(N) * slot.in;
  s.xd.resize(size_t(n));
  float* xd = s.xd.data();
  const uint64_t key = mask_key(slot, t);
  const float p = t.dropout, k = 1.0f / (1.0f - p);
  parallel_ranges(n, 4096, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) xd[i] = keep(key, i, p) ? x[i] * k : 0.0f;
  });
  return xd;
}

const uint16_t* to_bf16(std::vector<uint16_t>& buf, const float* x, int64_t n) {
  if (int64_t(buf.size()) < n) buf.resize(size_t(n));
  cpu::f32_to_bf16(buf.data(), x, n);
  return buf.data();
}

// dst (N, cols) = rows of src (N, ld) from column col0, as bf16.
const uint16_t* columns_bf16(std::vector<uint16_t>& buf, const float* src, int ld, int col0, int N,
                             int cols) {
  if (buf.size() < size_t(N) * cols) buf.resize(size_t(N) * cols);
  parallel_for(
      N, [&](int64_t n) { cpu::f32_to_bf16(buf.data() + n * cols, src + n * ld + col0, cols); });
  return buf.data();
}

void forward_bf16(const LoraSlot& slot, const LoraTerm& t, const float* xd, int N, float* y,
                  int ldy, LoraScratch& s, std::vector<float>& u) {
  const int r = t.r, in = slot.in, out = slot.out;
  cpu::gemm_bf16(u.data(), to_bf16(s.xb, xd, int64_t(N) * in),
                 to_bf16(s.wb, t.w + slot.a, int64_t(r) * in), N, r, in, false, true, 1.0f, 0.0f);
  s.tmp.resize(size_t(N) * out);
  cpu::gemm_bf16(s.tmp.data(), to_bf16(s.ub, u.data(), int64_t(N) * r),
                 to_bf16(s.wb, t.w + slot.b, int64_t(out) * r), N, out, r, false, true, t.scaling,
                 0.0f);
  const float* tmp = s.tmp.data();
  parallel_for(N, [&](int64_t n) {
    float* row = y + n * ldy + slot.col0;
    for (int j = 0; j < out; ++j) row[j] += tmp[n * out + j];
  });
}

// lora_backward's four GEMMs with bf16 inputs; dxs (N, in) = du A + beta_dx dxs, after d(x) is
// read (so dxs may be d(x)'s buffer).
void backward_bf16(const LoraSlot& slot, const LoraTerm& t, const float* xd, const float* u,
                   const float* dy, int ldy, int N, LoraScratch& s, float* dxs, float beta_dx) {
  const int r = t.r, in = slot.in, out = slot.out;
  const uint16_t* dyb = columns_bf16(s.yb, dy, ldy, slot.col0, N, out);
  const uint16_t* ub = to_bf16(s.ub, u, int64_t(N) * r);
  // dB (out, r) += s dy^T u.
  cpu::gemm_bf16(t.g + slot.b, dyb, ub, out, r, N, true, false, t.scaling, 1.0f);
  // du (N, r) = s dy B.
  s.du.resize(size_t(N) * r);
  cpu::gemm_bf16(s.du.data(), dyb, to_bf16(s.wb, t.w + slot.b, int64_t(out) * r), N, r, out, false,
                 false, t.scaling, 0.0f);
  const uint16_t* dub = to_bf16(s.ub, s.du.data(), int64_t(N) * r);
  // dA (r, in) += du^T d(x); dx (N, in) (+)= du A.
  cpu::gemm_bf16(t.g + slot.a, dub, to_bf16(s.xb, xd, int64_t(N) * in), r, in, N, true, false, 1.0f,
                 1.0f);
  cpu::gemm_bf16(dxs, dub, to_bf16(s.wb, t.w + slot.a, int64_t(r) * in), N, in, r, false, false,
                 1.0f, beta_dx);
}

}  // namespace

size_t LoraScratch::bytes() const {
  size_t b = (xd.capacity() + du.capacity() + tmp.capacity()) * sizeof(float) +
             (xb.capacity() + wb.capacity() + ub.capacity() + yb.capacity()) * sizeof(uint16_t);
  for (const auto& [slot, v] : u) b += v.capacity() * sizeof(float);
  return b;
}

void lora_forward(const LoraSlot& slot, const LoraTerm& t, const float* x, int N, float* y, int ldy,
                  LoraScratch& s) {
  const int r = t.r;
  const float* xd = dropout(slot, t, x, N, s);
  // u (N, r) = d(x) A^T, kept for backward.
  std::vector<float>& u = s.u[slot.a];
  u.resize(size_t(N) * r);
  if (t.bf16) return forward_bf16(slot, t, xd, N, y, ldy, s, u);
  cpu::gemm(u.data(), xd, t.w + slot.a, N, r, slot.in, false, true, 1.0f, 0.0f);
  // y[:, col0:] (N, out) += s u B^T, B (out, r).
  cpu::gemm_ld(y + slot.col0, ldy, u.data(), r, t.w + slot.b, r, N, slot.out, r, false, true,
               t.scaling, 1.0f);
}

void lora_backward(const LoraSlot& slot, const LoraTerm& t, const float* x, const float* dy,
                   int ldy, float* dx, int N, LoraScratch& s) {
  const int r = t.r, in = slot.in, out = slot.out;
  const float* xd = dropout(slot, t, x, N, s);
  const float* u = s.u.at(slot.a).data();
  // dx (N, in) += d(du A): straight into dx without dropout; with it, into s.xd (d(x) is used up
  // by dA before) and then through the mask.
  const bool masked = t.dropout > 0;
  float* dxs = masked ? s.xd.data() : dx;
  const float beta = masked ? 0.0f : 1.0f;
  if (t.bf16) {
    backward_bf16(slot, t, xd, u, dy, ldy, N, s, dxs, beta);
  } else {
    const float* dys = dy + slot.col0;  // (N, out), row stride ldy
    // dB (out, r) += s dy^T u.
    cpu::gemm_ld(t.g + slot.b, r, dys, ldy, u, r, out, r, N, true, false, t.scaling, 1.0f);
    // du (N, r) = s dy B.
    s.du.resize(size_t(N) * r);
    float* du = s.du.data();
    cpu::gemm_ld(du, r, dys, ldy, t.w + slot.b, r, N, r, out, false, false, t.scaling, 0.0f);
    // dA (r, in) += du^T d(x).
    cpu::gemm(t.g + slot.a, du, xd, r, in, N, true, false, 1.0f, 1.0f);
    cpu::gemm(dxs, du, t.w + slot.a, N, in, r, false, false, 1.0f, beta);
  }
  if (!masked) return;
  const uint64_t key = mask_key(slot, t);
  const float p = t.dropout, k = 1.0f / (1.0f - p);
  parallel_ranges(int64_t(N) * in, 4096, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (keep(key, i, p)) dx[i] += dxs[i] * k;
  });
}

}  // namespace kiln

#include "kiln/model/mixed_linear.h"

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/model/nf4_base.h"
#include "kiln/ops/matmul_bf16.h"

namespace kiln {

using ops::WeightLayout;

MixedLinear::MixedLinear(Precision p, const Nf4Base* nf4) : p_(p), nf4_(nf4) {
  KILN_CHECK(!nf4 || p != Precision::fp16, "qlora",
             "NF4 weights compute in bf16 or fp32, not fp16; use train.precision = bf16");
}

void MixedLinear::refresh(const Tensor& weights) {
  base_ = weights.f32();
  const int64_t P = weights.numel();
  if (p_ == Precision::bf16) {
    // The NF4 weights' share of the copy is never written, so its pages are never resident.
    if (bf16_.numel() != P) bf16_ = Tensor::empty({P}, DType::bf16);
    int64_t at = 0;
    auto convert = [&](int64_t end) {
      ops::cpu::f32_to_bf16(bf16_.data<uint16_t>() + at, base_ + at, end - at);
    };
    if (nf4_) {
      for (auto [b, e] : nf4_->ranges()) {
        convert(b);  // up to the held range, then past it
        at = e;
      }
    }
    convert(P);
  } else if (p_ == Precision::fp16) {
    if (fp16_.numel() != P) fp16_ = Tensor::empty({P});
    float* dst = fp16_.f32();
    parallel_ranges(P, 1 << 14, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = f16_to_f32(f32_to_f16(base_[i]));
    });
  }
}

size_t MixedLinear::bytes() const {
  const int64_t held = nf4_ ? nf4_->numel() : 0;  // never written
  return (bf16_.defined() ? bf16_.nbytes() - 2 * held : 0) +
         (fp16_.defined() ? fp16_.nbytes() : 0) +
         (xa_.capacity() + xb_.capacity() + wb_.capacity()) * 2 +
         (fa_.capacity() + fb_.capacity() + wf_.capacity()) * 4;
}

const uint16_t* MixedLinear::weight_bf16(const float* w, int64_t n) {
  if (!nf4_ || !nf4_->holds(w - base_)) return bf16_of(w);
  if (int64_t(wb_.size()) < n) wb_.resize(n);
  nf4_->dequantize_bf16(w - base_, n, wb_.data());
  return wb_.data();
}

const float* MixedLinear::weight_f32(const float* w, int64_t n) {
  if (p_ == Precision::fp16) return fp16_of(w);
  if (!nf4_ || !nf4_->holds(w - base_)) return w;
  if (int64_t(wf_.size()) < n) wf_.resize(n);
  nf4_->dequantize(w - base_, n, wf_.data());
  return wf_.data();
}

uint16_t* MixedLinear::to_bf16(std::vector<uint16_t>& buf, const float* x, int64_t n) {
  if (int64_t(buf.size()) < n) buf.resize(n);
  ops::cpu::f32_to_bf16(buf.data(), x, n);
  return buf.data();
}

float* MixedLinear::to_fp16(std::vector<float>& buf, const float* x, int64_t n) {
  if (int64_t(buf.size()) < n) buf.resize(n);
  float* d = buf.data();
  parallel_ranges(n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] = f16_to_f32(f32_to_f16(x[i]));
  });
  return d;
}

void MixedLinear::forward(float* y, const float* x, const float* w, const float* b, int N, int IN,
                          int OUT, WeightLayout layout) {
  const int64_t nw = int64_t(IN) * OUT;
  if (p_ == Precision::fp32) {
    return ops::cpu::linear_forward(y, x, weight_f32(w, nw), b, N, IN, OUT, layout);
  }
  if (p_ == Precision::fp16) {
    return ops::cpu::linear_forward(y, to_fp16(fa_, x, int64_t(N) * IN), weight_f32(w, nw), b, N,
                                    IN, OUT, layout);
  }
  const uint16_t* xb = to_bf16(xa_, x, int64_t(N) * IN);
  ops::cpu::gemm_bf16(y, xb, weight_bf16(w, nw), N, OUT, IN, false, layout == WeightLayout::out_in,
                      1.0f, 0.0f);
  if (b) {
    parallel_for(N, [&](int64_t n) {
      float* row = y + n * OUT;
      for (int o = 0; o < OUT; ++o) row[o] += b[o];
    });
  }
}

void MixedLinear::backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                           const float* w, int N, int IN, int OUT, WeightLayout layout) {
  const int64_t nw = int64_t(IN) * OUT;
  KILN_CHECK(!dw || !nf4_ || !nf4_->holds(w - base_), "qlora",
             "an NF4 weight is frozen: it has no gradient");
  if (p_ == Precision::fp32) {
    return ops::cpu::linear_backward(dx, dw, db, dy, x, dx ? weight_f32(w, nw) : w, N, IN, OUT,
                                     layout);
  }
  if (p_ == Precision::fp16) {
    return ops::cpu::linear_backward(dx, dw, db, to_fp16(fb_, dy, int64_t(N) * OUT),
                                     to_fp16(fa_, x, int64_t(N) * IN), fp16_of(w), N, IN, OUT,
                                     layout);
  }
  const bool out_in = layout == WeightLayout::out_in;
  const uint16_t* dyb = to_bf16(xb_, dy, int64_t(N) * OUT);
  // dx (N,IN) = dy (N,OUT) @ W: W is (OUT,IN) as stored, or (IN,OUT) and transposed.
  if (dx) ops::cpu::gemm_bf16(dx, dyb, weight_bf16(w, nw), N, IN, OUT, false, !out_in, 1.0f, 0.0f);
  if (dw) {
    const uint16_t* xb = to_bf16(xa_, x, int64_t(N) * IN);
    if (out_in) {  // dW (OUT,IN) += dy^T @ x
      ops::cpu::gemm_bf16(dw, dyb, xb, OUT, IN, N, true, false, 1.0f, 1.0f);
    } else {  // dW (IN,OUT) += x^T @ dy
      ops::cpu::gemm_bf16(dw, xb, dyb, IN, OUT, N, true, false, 1.0f, 1.0f);
    }
  }
  if (db) {
    // Column sums in a fixed order (row by row) per column block: deterministic.
    parallel_ranges(OUT, 16, [&](int64_t o0, int64_t o1) {
      for (int n = 0; n < N; ++n)
        for (int64_t o = o0; o < o1; ++o) db[o] += dy[int64_t(n) * OUT + o];
    });
  }
}

void MixedLinear::lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h,
                                        const float* w, const int* targets, int N, int C, int V,
                                        float grad_scale, const ops::VocabShard* shard) {
  if (p_ == Precision::bf16) {
    if (shard) {
      return ops::cpu::lm_head_cross_entropy_bf16_shard(losses, dh, dw, h, bf16_of(w), targets, N,
                                                        C, V, grad_scale, *shard);
    }
    return ops::cpu::lm_head_cross_entropy_bf16(losses, dh, dw, h, bf16_of(w), targets, N, C, V,
                                                grad_scale);
  }
  const float* hh = p_ == Precision::fp16 ? to_fp16(fb_, h, int64_t(N) * C) : h;
  const float* ww = p_ == Precision::fp16 ? fp16_of(w) : w;
  if (shard) {
    return ops::cpu::lm_head_cross_entropy_shard(losses, dh, dw, hh, ww, targets, N, C, V,
                                                 grad_scale, *shard);
  }
  ops::cpu::lm_head_cross_entropy(losses, dh, dw, hh, ww, targets, N, C, V, grad_scale);
}

}  // namespace kiln

// The LM head fused with softmax cross-entropy. Tokens are processed in chunks so the (N,V)
// logits are never all stored: per chunk, logits = h @ W^T, loss, and (when training) the
// gradient, then the chunk's logits are dropped. Cost: 2*N*V*C FLOPs forward, 4*N*V*C backward.
#pragma once

#include <cstdint>
#include <functional>

namespace kiln::ops {

// Vocabulary parallelism (Megatron's parallel cross-entropy): W holds rows [begin, begin+V) of a
// vocabulary of `total` rows split over ranks. Per chunk, the row maxima and then the row sums of
// e^(logit - max) with the target logits are combined over the ranks by `reduce` (x (n) in place:
// the elementwise max when `max`, else the sum); it is called from the calling thread, between
// the chunk's parallel loops, the same number of times on every rank. Targets index the whole
// vocabulary; every rank gets the full losses, dh is this rank's partial sum (sum it over ranks)
// and dw the gradient of its rows.
struct VocabShard {
  int begin = 0, total = 0;
  std::function<void(float* x, int n, bool max)> reduce;
};

namespace ref {
// h (N,C) final hidden states; w (V,C) the output embedding; targets (N), a target < 0 is
// ignored (loss 0, no gradient: padding and prompt tokens in fine-tuning).
// losses (N) = logsumexp(logits) - logits[target].
// When dh is not null: dlogits = (softmax(logits) - onehot(target)) * grad_scale, and
// dh (N,C) = dlogits @ W (overwritten), dw (V,C) += dlogits^T @ h (skipped when dw is null: a
// frozen head).
void lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h, const float* w,
                           const int* targets, int N, int C, int V, float grad_scale);
}  // namespace ref

namespace cpu {
void lm_head_cross_entropy(float* losses, float* dh, float* dw, const float* h, const float* w,
                           const int* targets, int N, int C, int V, float grad_scale);
// Mixed precision: the three GEMMs take bf16 inputs (w_bf16 is W rounded to bf16, (V,C); h and
// dlogits are rounded per chunk) with fp32 accumulation; softmax, loss and gradients stay fp32.
void lm_head_cross_entropy_bf16(float* losses, float* dh, float* dw, const float* h,
                                const uint16_t* w_bf16, const int* targets, int N, int C, int V,
                                float grad_scale);
// The vocabulary-parallel forms of the two above: w holds the shard's V rows.
void lm_head_cross_entropy_shard(float* losses, float* dh, float* dw, const float* h,
                                 const float* w, const int* targets, int N, int C, int V,
                                 float grad_scale, const VocabShard& shard);
void lm_head_cross_entropy_bf16_shard(float* losses, float* dh, float* dw, const float* h,
                                      const uint16_t* w_bf16, const int* targets, int N, int C,
                                      int V, float grad_scale, const VocabShard& shard);
}  // namespace cpu

}  // namespace kiln::ops

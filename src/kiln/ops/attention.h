// Causal self-attention with grouped-query heads (GQA; MQA when K = 1; MHA when K = H).
// qkv (B,T,(H+2K)*D) is packed per token as one projection produces it: H query heads, then K
// key heads, then K value heads, D dims each. Query head h reads kv head h / (H/K).
// Scores are scaled by 1/sqrt(D). Cost: about 2*B*H*T*T*D FLOPs forward (causal half of 4x).
// pos (B,T), optional: each token's position in its own sequence when a row packs several
// (positions count up from 0 and restart at 0 where a sequence starts); query t then sees keys
// t - pos[t] .. t only, its own sequence (block-diagonal causal attention), so a packed row
// computes what its sequences would alone. Null: one sequence per row (pos[t] = t). A pos that
// breaks this (a position neither 0 nor one past the one before) is an Error.
#pragma once

namespace kiln::ops {

// Throws Error naming the row and token where pos (B,T) breaks the contract above (null: fine).
void check_attention_positions(const int* pos, int B, int T);
// The first key query t of row b sees: its sequence's start (0 unpacked); non-decreasing in t.
inline int first_key(const int* pos, int b, int T, int t) {
  return pos ? t - pos[static_cast<long long>(b) * T + t] : 0;
}

namespace ref {
// Plain softmax(QK^T)V, materializing each row's scores. out (B,T,H*D); lse (B,H,T) is the
// log-sum-exp of each query's scaled scores, saved for backward.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int H, int K, int D,
                       const int* pos = nullptr);
// dqkv (B,T,(H+2K)*D) overwritten, from dout (B,T,H*D) and the forward's qkv, out and lse.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int H, int K, int D,
                        const int* pos = nullptr);
}  // namespace ref

namespace cpu {
// Flash-style: key tiles with an online softmax; never stores a T x T matrix.
void attention_forward(float* out, float* lse, const float* qkv, int B, int T, int H, int K, int D,
                       const int* pos = nullptr);
// Recomputes probabilities tile by tile from lse; GQA gradients summed over each group.
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int B, int T, int H, int K, int D,
                        const int* pos = nullptr);
}  // namespace cpu

}  // namespace kiln::ops

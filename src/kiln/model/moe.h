// Mixture-of-Experts routing, as Mixtral does it: the router's logits (N, E) go through a softmax,
// each token takes its k most probable experts, and their k probabilities are renormalised to sum
// to one. The chosen (token, slot) pairs are then permuted so each expert's rows are contiguous:
// every expert runs as one GEMM over its rows (grouped), in training (model/transformer.cpp) and
// in the engine (infer/cpu_forward_pass.cpp). With a capacity factor, an expert keeps only its
// first ceil(factor * N * k / E) tokens in token order (Megatron's moe_expert_capacity_factor
// with the position drop policy); the pairs over capacity are dropped: the token's output then
// lacks that expert's term, and its other weights stay as they were.
//
// The auxiliary losses pool every layer's routing over a step, as Hugging Face's Mixtral does:
//   aux = E * sum_e f_e * P_e,  f_e = tokens routing to e / (L*N),  P_e = mean probability of e
//   z   = mean over the L*N (token, layer) pairs of logsumexp(logits)^2   (ST-MoE's router z-loss)
// (L: MoE layers, N: tokens including ignored ones). The training loss adds
// router_aux_loss_coef * aux when output_router_logits, and router_z_loss_coef * z.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln {

struct MoeRouting {
  int N = 0, E = 0, k = 0;
  std::vector<float> probs;   // (N, E) softmax of the router logits
  std::vector<float> lse;     // (N) their log-sum-exp
  std::vector<int> expert;    // (N, k) the chosen experts, most probable first
  std::vector<float> weight;  // (N, k) their probabilities over the k's sum
  std::vector<int> offsets;   // (E + 1) expert e's permuted rows are [offsets[e], offsets[e+1])
  std::vector<int> source;    // (rows) permuted row r is (token, slot) pair source[r] = t*k + j
  std::vector<int> selected;  // (E) tokens whose k experts include e, before any drop
  int64_t dropped = 0;        // pairs over their expert's capacity
  int rows() const { return offsets.empty() ? 0 : offsets[size_t(E)]; }
};

// The most tokens one expert keeps: ceil(capacity_factor * N * k / E), or N*k when dropless (0).
int moe_capacity(int N, int E, int k, float capacity_factor);

// Routes N tokens from the router's logits (N, E).
void moe_route(MoeRouting& r, const float* logits, int N, int E, int k, float capacity_factor);

// Expert parallelism's bookkeeping for one layer on one rank of the ep group (P ranks, El experts
// each). Rows leave in the routing's permuted order, rank by rank (send_rows[p] rows to p); they
// arrive from each rank grouped by this rank's experts (recv[p*El + e]: rows from p for local
// expert e); `grouped` lists the arrived rows expert by expert (offsets: local expert e's are
// grouped[offsets[e] .. offsets[e+1])), which is the order the experts' GEMMs run in.
struct MoeDispatch {
  std::vector<int64_t> send_rows, recv_rows;  // (P) rows to and from each rank
  std::vector<int> recv;                      // (P*El)
  std::vector<int> grouped;                   // (R) arrived row index, by local expert
  std::vector<int> offsets;                   // (El+1)
  std::vector<float> xe, up, act, ye;         // (R, C) (R, 2F) (R, F) (R, C), grouped order
  int rows() const { return int(grouped.size()); }
};

// From the routing (global experts) and the per-expert counts the ranks exchanged (recv, P*El),
// fills the rest of d for this rank. El = r.E / P.
void moe_plan_dispatch(MoeDispatch& d, const MoeRouting& r, int P, const std::vector<int>& recv);

// The auxiliary losses of one step, pooled over its MoE layers.
struct MoeStats {
  int layers = 0;
  int64_t pairs = 0;              // (token, layer) pairs: L*N
  std::vector<int64_t> selected;  // (E) routed (token, layer) pairs per expert
  std::vector<double> prob_sum;   // (E) router probabilities summed over the pairs
  double lse2_sum = 0;            // logsumexp^2 summed over the pairs
  int64_t dropped = 0;
  void reset(int E);
  void add(const MoeRouting& r);
  double aux() const;  // Switch's load-balancing loss (HF's load_balancing_loss_func)
  double z() const;    // the router z-loss
  // Each expert's share of the routed pairs (sums to 1).
  std::vector<double> fractions() const;
};

// Backward through the routing. dweight (N, k): the loss's gradient by each token's renormalised
// weights. Writes dlogits (N, E) including the auxiliary losses' gradients (totals: the step's
// pooled statistics; aux_scale, z_scale: the coefficients times the gradient scale, 0 when a
// loss is off).
void moe_route_backward(float* dlogits, const MoeRouting& r, const float* dweight,
                        const MoeStats& totals, float aux_scale, float z_scale);

}  // namespace kiln

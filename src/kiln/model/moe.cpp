#include "kiln/model/moe.h"

#include <algorithm>
#include <cmath>

namespace kiln {

int moe_capacity(int N, int E, int k, float capacity_factor) {
  const int64_t pairs = int64_t(N) * k;
  if (capacity_factor <= 0) return int(pairs);
  const double cap = std::ceil(double(capacity_factor) * double(pairs) / double(E));
  return int(std::min<double>(cap, double(pairs)));
}

void moe_route(MoeRouting& r, const float* logits, int N, int E, int k, float capacity_factor) {
  r.N = N;
  r.E = E;
  r.k = k;
  r.probs.resize(size_t(N) * E);
  r.lse.resize(size_t(N));
  r.expert.resize(size_t(N) * k);
  r.weight.resize(size_t(N) * k);
  r.selected.assign(size_t(E), 0);
  std::vector<int> order(static_cast<size_t>(E));
  for (int t = 0; t < N; ++t) {
    const float* z = logits + int64_t(t) * E;
    float* p = r.probs.data() + int64_t(t) * E;
    const float m = *std::max_element(z, z + E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += std::exp(double(z[e] - m));
    for (int e = 0; e < E; ++e) p[e] = float(std::exp(double(z[e] - m)) / sum);
    r.lse[size_t(t)] = m + float(std::log(sum));
    // The k most probable, ties to the lower index.
    for (int e = 0; e < E; ++e) order[size_t(e)] = e;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    float kept = 0;
    for (int j = 0; j < k; ++j) kept += p[order[size_t(j)]];
    for (int j = 0; j < k; ++j) {
      const int e = order[size_t(j)];
      r.expert[size_t(t) * k + j] = e;
      r.weight[size_t(t) * k + j] = p[e] / kept;
      ++r.selected[size_t(e)];
    }
  }
  // Permute: expert by expert, each expert's pairs in token order, at most `cap` of them.
  const int cap = moe_capacity(N, E, k, capacity_factor);
  r.offsets.assign(size_t(E) + 1, 0);
  for (int e = 0; e < E; ++e) r.offsets[size_t(e) + 1] = std::min(r.selected[size_t(e)], cap);
  for (int e = 0; e < E; ++e) r.offsets[size_t(e) + 1] += r.offsets[size_t(e)];
  r.source.resize(size_t(r.offsets[size_t(E)]));
  std::vector<int> fill(r.offsets.begin(), r.offsets.end() - 1);
  r.dropped = 0;
  for (int t = 0; t < N; ++t) {
    for (int j = 0; j < k; ++j) {
      const int e = r.expert[size_t(t) * k + j];
      if (fill[size_t(e)] < r.offsets[size_t(e) + 1])
        r.source[size_t(fill[size_t(e)]++)] = t * k + j;
      else
        ++r.dropped;
    }
  }
}

void moe_plan_dispatch(MoeDispatch& d, const MoeRouting& r, int P, const std::vector<int>& recv) {
  const int El = r.E / P;
  d.recv = recv;
  d.send_rows.assign(size_t(P), 0);
  d.recv_rows.assign(size_t(P), 0);
  for (int e = 0; e < r.E; ++e)
    d.send_rows[size_t(e / El)] += r.offsets[size_t(e) + 1] - r.offsets[size_t(e)];
  // Arrived rows: from rank 0 its rows for local expert 0, 1, ..., then rank 1's, ...
  std::vector<int> start(size_t(P) * El);
  int at = 0;
  for (int p = 0; p < P; ++p)
    for (int e = 0; e < El; ++e) {
      start[size_t(p) * El + e] = at;
      at += recv[size_t(p) * El + e];
      d.recv_rows[size_t(p)] += recv[size_t(p) * El + e];
    }
  d.grouped.clear();
  d.offsets.assign(size_t(El) + 1, 0);
  for (int e = 0; e < El; ++e) {
    d.offsets[size_t(e)] = int(d.grouped.size());
    for (int p = 0; p < P; ++p)
      for (int i = 0; i < recv[size_t(p) * El + e]; ++i)
        d.grouped.push_back(start[size_t(p) * El + e] + i);
  }
  d.offsets[size_t(El)] = at;
}

void MoeStats::reset(int E) {
  layers = 0;
  pairs = 0;
  selected.assign(size_t(E), 0);
  prob_sum.assign(size_t(E), 0.0);
  lse2_sum = 0;
  dropped = 0;
}

void MoeStats::add(const MoeRouting& r) {
  ++layers;
  pairs += r.N;
  for (int t = 0; t < r.N; ++t) {
    const float* p = r.probs.data() + int64_t(t) * r.E;
    for (int e = 0; e < r.E; ++e) prob_sum[size_t(e)] += p[e];
    lse2_sum += double(r.lse[size_t(t)]) * r.lse[size_t(t)];
  }
  for (int e = 0; e < r.E; ++e) selected[size_t(e)] += r.selected[size_t(e)];
  dropped += r.dropped;
}

double MoeStats::aux() const {
  if (pairs == 0) return 0;
  const double n = double(pairs);
  double sum = 0;
  for (size_t e = 0; e < selected.size(); ++e) sum += (double(selected[e]) / n) * (prob_sum[e] / n);
  return double(selected.size()) * sum;
}

double MoeStats::z() const {
  return pairs == 0 ? 0 : lse2_sum / double(pairs);
}

std::vector<double> MoeStats::fractions() const {
  int64_t total = 0;
  for (int64_t s : selected) total += s;
  std::vector<double> f(selected.size(), 0.0);
  for (size_t e = 0; e < selected.size(); ++e)
    if (total > 0) f[e] = double(selected[e]) / double(total);
  return f;
}

void moe_route_backward(float* dlogits, const MoeRouting& r, const float* dweight,
                        const MoeStats& totals, float aux_scale, float z_scale) {
  const int E = r.E, k = r.k;
  const double n = double(std::max<int64_t>(totals.pairs, 1));
  std::vector<double> dp(static_cast<size_t>(E));
  // d aux / d p_te = E * f_e / (L*N): the selection counts are constants.
  std::vector<double> aux_dp(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e)
    aux_dp[size_t(e)] = double(aux_scale) * E * double(totals.selected[size_t(e)]) / (n * n);
  for (int t = 0; t < r.N; ++t) {
    const float* p = r.probs.data() + int64_t(t) * E;
    const int* ex = r.expert.data() + int64_t(t) * k;
    const float* dw = dweight + int64_t(t) * k;
    for (int e = 0; e < E; ++e) dp[size_t(e)] = aux_dp[size_t(e)];
    // w_j = p_j / S over the chosen: d p_m += (dw_m - sum_j dw_j w_j) / S.
    double S = 0, dot = 0;
    for (int j = 0; j < k; ++j) S += p[ex[j]];
    for (int j = 0; j < k; ++j) dot += double(dw[j]) * (p[ex[j]] / S);
    for (int j = 0; j < k; ++j) dp[size_t(ex[j])] += (double(dw[j]) - dot) / S;
    // Softmax: dz_e = p_e (dp_e - sum p dp); z-loss: d (lse^2 / n) / dz_e = 2 lse p_e / n.
    double pdp = 0;
    for (int e = 0; e < E; ++e) pdp += double(p[e]) * dp[size_t(e)];
    const double zg = double(z_scale) * 2.0 * double(r.lse[size_t(t)]) / n;
    float* dz = dlogits + int64_t(t) * E;
    for (int e = 0; e < E; ++e) dz[e] = float(double(p[e]) * (dp[size_t(e)] - pdp + zg));
  }
}

}  // namespace kiln

#include "kiln/cuda/bench.h"

#include <algorithm>
#include <random>
#include <vector>

#include "kiln/cuda/attention.h"
#include "kiln/cuda/kernels.h"

namespace kiln::cuda {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename T>
AttentionTiming run(int B, int Tn, int H, int K, int D, int reps) {
  cudaStream_t s = streams().compute;
  const int64_t rows = int64_t(B) * Tn, qkv_n = rows * (H + 2 * K) * D, out_n = rows * H * D;
  std::vector<float> host(size_t(std::max(qkv_n, out_n)));
  std::mt19937 g(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& x : host) x = nd(g);
  DeviceBuffer<float> staging = upload(host.data(), int64_t(host.size()), s, "bench");
  DeviceBuffer<T> qkv(qkv_n, "bench", s), out(out_n, "bench", s), dout(out_n, "bench", s),
      dqkv(qkv_n, "bench", s);
  DeviceBuffer<float> lse(int64_t(B) * H * Tn, "bench", s);
  if constexpr (std::is_same_v<T, bf16>) {
    f32_to_bf16(qkv.data(), staging.data(), qkv_n, s);
    f32_to_bf16(dout.data(), staging.data(), out_n, s);
  } else {
    copy_async(qkv.data(), staging.data(), qkv.bytes(), cudaMemcpyDeviceToDevice, s, "bench");
    copy_async(dout.data(), staging.data(), dout.bytes(), cudaMemcpyDeviceToDevice, s, "bench");
  }
  Event a(true), b(true), c(true);
  std::vector<double> fwd, bwd;
  for (int r = 0; r <= reps; ++r) {  // r == 0 warms up
    a.record(s);
    attention_forward<T>(out.data(), lse.data(), qkv.data(), B, Tn, H, K, D, s);
    b.record(s);
    attention_backward<T>(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, Tn, H, K,
                          D, s);
    c.record(s);
    c.synchronize();
    if (r > 0) fwd.push_back(b.since(a)), bwd.push_back(c.since(b));
  }
  AttentionTiming t;
  t.fwd_ms = median(fwd);
  t.bwd_ms = median(bwd);
  const double f = 4.0 * B * H * double(Tn) * Tn * D / 2;
  t.fwd_tflops = f / (t.fwd_ms * 1e-3) / 1e12;
  t.fwd_bwd_tflops = 3.5 * f / ((t.fwd_ms + t.bwd_ms) * 1e-3) / 1e12;
  return t;
}

}  // namespace

AttentionTiming time_attention(int B, int T, int H, int K, int D, bool bf16_inputs, int reps) {
  require("bench attention");
  KILN_CHECK(reps >= 1, "bench attention", "--reps must be >= 1, got ", reps);
  return bf16_inputs ? run<bf16>(B, T, H, K, D, reps) : run<float>(B, T, H, K, D, reps);
}

}  // namespace kiln::cuda

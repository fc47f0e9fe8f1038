// What the GPU decoder (infer/cuda_decoder.h) and the GPU trainer (train/cuda_train_state.h) share: the
// model's weights on the device with their bf16 GEMM copy, the RoPE tables, and the norm of the
// architecture. Only with the CUDA backend (KILN_HAVE_CUDA).
#pragma once

#ifdef KILN_HAVE_CUDA

#include <type_traits>
#include <vector>

#include "kiln/cuda/kernels.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/rope.h"

namespace kiln {

// The model's fp32 weights uploaded to the device, named pointers into them (wp), and with
// bf16_copy a bf16 copy of them that bf16 GEMMs read (refresh() after the fp32 weights change;
// the trainer's AdamW kernel writes it in its own pass).
struct DeviceWeights {
  DeviceWeights(const Model& model, bool bf16_copy, cudaStream_t s) {
    w = cuda::DeviceBuffer<float>(model.num_params(), "weights", s);
    cuda::to_device(w.data(), model.weights().f32(), w.bytes(), s, "upload weights");
    wp = model.bind(w.data());
    if (bf16_copy) {
      wb = cuda::DeviceBuffer<cuda::bf16>(w.size(), "bf16 weights", s);
      refresh(s);
    }
  }
  void refresh(cudaStream_t s) {
    if (wb.size() > 0) cuda::f32_to_bf16(wb.data(), w.data(), w.size(), s);
  }
  // A GEMM weight as Act: the fp32 weight itself, or its place in the bf16 copy.
  template <typename Act>
  const Act* gemm(const float* p) const {
    if constexpr (std::is_same_v<Act, cuda::bf16>) {
      return wb.data() + (p - w.data());
    } else {
      return p;
    }
  }
  size_t bytes() const { return w.bytes() + wb.bytes(); }

  cuda::DeviceBuffer<float> w;
  cuda::DeviceBuffer<cuda::bf16> wb;  // empty without bf16_copy
  ModelParams wp;
};

// RoPE cos/sin tables (T, D/2) for positions 0..T-1 on the device (ops/rope.h); empty for GPT-2,
// whose positions are learned.
struct DeviceRope {
  DeviceRope(const ModelConfig& cfg, int T, cudaStream_t s) {
    if (cfg.arch != Arch::llama) return;
    const int D = cfg.head_dim;
    std::vector<float> inv(D / 2), cs(size_t(T) * (D / 2)), sn(cs.size());
    ops::rope_inv_freq(inv.data(), D, cfg.rope_theta, cfg.rope_scaling, T);
    ops::rope_table(cs.data(), sn.data(), inv.data(), T, D);
    cos = cuda::upload(cs.data(), int64_t(cs.size()), s, "rope table");
    sin = cuda::upload(sn.data(), int64_t(sn.size()), s, "rope table");
  }
  cuda::DeviceBuffer<float> cos, sin;
};

// The architecture's norm over N rows: RMSNorm (Llama; mean and b unused) or LayerNorm (GPT-2).
template <typename Act>
void norm_forward(const ModelConfig& c, Act* out, float* mean, float* rstd, const Act* x,
                  const float* w, const float* b, int N, cudaStream_t s) {
  if (c.arch == Arch::llama) {
    cuda::rms_norm_forward<Act>(out, rstd, x, w, N, c.hidden, c.norm_eps, s);
  } else {
    cuda::layer_norm_forward<Act>(out, mean, rstd, x, w, b, N, c.hidden, c.norm_eps, s);
  }
}

}  // namespace kiln

#endif  // KILN_HAVE_CUDA

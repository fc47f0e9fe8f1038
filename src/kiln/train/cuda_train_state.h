// Training on one GPU (config `device: cuda`): the whole model's weights, gradients and AdamW
// moments live in device memory, and a step is the CPU TrainState's sequence of ops run by the
// cuda layer's kernels (cuBLASLt GEMMs, flash attention, fused LM head + cross-entropy, fused
// multi-tensor AdamW). The trainer keeps everything else (data, schedule, metrics, evaluation,
// checkpoints): it downloads weights and moments only to save a checkpoint.
//
// Precision: fp32 runs fp32 activations and GEMMs (TF32 tensor cores when `tf32`); bf16 keeps
// activations in bf16 and a bf16 copy of the weights for the GEMMs (refreshed by the AdamW kernel
// in the same pass), with fp32 master weights, gradients, moments, norms statistics and softmax.
// Without the CUDA backend (KILN_HAVE_CUDA unset) the class exists but its constructor throws an
// Error saying how to build with CUDA, so callers need no #ifdefs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/model/precision.h"
#include "kiln/model/transformer.h"
#include "kiln/train/optimizer.h"

namespace kiln {

// The GPU in words (cuda::device_description()), "" without the CUDA backend or a GPU.
std::string cuda_device_name();

class CudaTrainState {
 public:
  // Uploads the model's weights. B, T: the micro-batch this process computes.
  CudaTrainState(const Model& model, int B, int T, Precision precision, bool tf32,
                 const AdamWConfig& adamw);
  ~CudaTrainState();
  CudaTrainState(const CudaTrainState&) = delete;
  CudaTrainState& operator=(const CudaTrainState&) = delete;

  // One micro-batch (ids, targets: (B,T) on the host). Returns the mean cross-entropy over the
  // targets >= 0; with `backward`, adds the gradient of that mean times grad_scale into the
  // device gradients (as TrainState::step does).
  double step(const int* ids, const int* targets, bool backward, float grad_scale = 1.0f);
  int64_t counted_tokens() const;
  const std::vector<float>& token_losses() const;  // per token, of the last step

  void zero_grads();
  double grad_norm();  // L2 over every gradient (double accumulation, on the device)
  // clip_and_update (optimizer.h): global-norm clipping to `clip` (0 = off) folded into one
  // fused AdamW launch; a non-finite norm skips the update and returns false.
  [[nodiscard]] bool clip_and_step(float lr, float clip, double norm);

  // The optimizer state of a resumed run onto the device; and back, with the weights, for a
  // checkpoint (the host Model and AdamW then hold exactly what the GPU holds).
  void upload_optimizer(const AdamW& opt);
  void download(Model& model, AdamW& opt) const;
  void download_weights(Model& model) const;
  void download_grads(float* grads) const;  // (P) host, the weights' layout

  // Device bytes of weights, gradients, moments and bf16 weight copy; and of activations.
  size_t state_bytes() const;
  size_t activation_bytes() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln

// Training precision and activation recomputation: the two memory/speed levers of Megatron.
#pragma once

#include <string>

namespace kiln {

namespace dist {
class Comm;
}

// fp32: everything fp32. bf16: GEMM inputs (weights and activations) rounded to bf16, products
// accumulated in fp32 (ops/matmul_bf16.h); norms, softmax, the loss, gradients, master weights
// and AdamW stay fp32. fp16: GEMM inputs rounded to fp16 values (computed in fp32: this CPU has
// no fp16 matrix unit) and gradients confined to fp16's range, which dynamic loss scaling keeps
// them in (train/loss_scaler.h).
enum class Precision { fp32, bf16, fp16 };

// none: keep every activation. selective: recompute the attention core (its output and
// log-sum-exp) in backward. full: keep only each layer's input and recompute the whole block.
enum class Recompute { none, selective, full };

Precision precision_from_name(const std::string& name);  // throws naming the choices
Recompute recompute_from_name(const std::string& name);
const char* name_of(Precision p);
const char* name_of(Recompute r);

struct TrainOptions {
  Precision precision = Precision::fp32;
  Recompute recompute = Recompute::none;
  int recompute_layers = -1;  // how many layers (from the first) recompute; -1 = all
  // Tensor parallelism (model/tensor_parallel.h): the model is this rank's shard and `tp` its
  // group (null or size 1: none). With sequence_parallel, the norms and the residual stream hold
  // this rank's 1/tp of the B*T rows. The shard's vocabulary starts at row vocab_begin of
  // vocab_total (0: the model's own vocabulary).
  dist::Comm* tp = nullptr;
  bool sequence_parallel = false;
  int vocab_begin = 0, vocab_total = 0;
};

}  // namespace kiln

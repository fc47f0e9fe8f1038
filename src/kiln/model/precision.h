// Training precision and activation recomputation: the two memory/speed levers of Megatron.
#pragma once

#include <string>

namespace kiln {

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

}  // namespace kiln

// Greedy decoding on the GPU: the index of each row's largest logit, so only N ints (not N x V
// logits) cross to the host per decode step.
#pragma once

#include "kiln/cuda/runtime.h"

namespace kiln::cuda {

// out (N) = argmax over each row of x (N, V); ties go to the lowest index (as std::max_element);
// NaN never wins. T is float or bf16.
template <typename T>
void argmax_rows(int* out, const T* x, int N, int V, cudaStream_t s);

}  // namespace kiln::cuda

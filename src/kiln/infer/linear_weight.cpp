#include "kiln/infer/linear_weight.h"

#include "kiln/core/error.h"
#include "kiln/ops/matmul.h"

namespace kiln {

void linear(float* y, const float* x, const LinearWeight& w, int N) {
  if (w.q) {
    KILN_DCHECK(w.q->rows == w.out && w.q->cols == w.in);
    quant::cpu::matmul(y, x, *w.q, N);
    return;
  }
  KILN_CHECK(w.f32, "linear", "weight has neither fp32 data nor a quantized tensor");
  ops::cpu::linear_forward(y, x, w.f32, nullptr, N, w.in, w.out, ops::WeightLayout::out_in);
}

}  // namespace kiln

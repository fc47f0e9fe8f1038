// QLoRA's frozen base: the linear weights of a Model (every projection of every layer; not the
// embeddings, norms or LM head, which bitsandbytes leaves unquantized too) held in NF4 with double
// quantization (ops/nf4.h), one tensor per Hugging Face parameter, found by its offset in the
// flat buffer. MixedLinear dequantizes a GEMM's weight into scratch just before the GEMM (forward
// and the input-gradient backward); the fp32 copies in the model's flat buffer are then released.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/ops/nf4.h"

namespace kiln {

class Model;

class Nf4Base {
 public:
  // Quantizes the model's linear weights; throws naming a weight whose size is not a multiple
  // of 64 values.
  explicit Nf4Base(const Model& model);

  // Whether the weight at this flat offset is held here (the first of a fused GEMM's weights).
  bool holds(int64_t offset) const;
  // The n weights from flat offset `offset`: one parameter or several back to back (q|k|v,
  // gate|up), all held here. Dequantized to fp32, or to bf16 rounded to nearest even.
  void dequantize(int64_t offset, int64_t n, float* out) const;
  void dequantize_bf16(int64_t offset, int64_t n, uint16_t* out) const;

  int64_t numel() const { return numel_; }  // weights held
  size_t bytes() const;                     // their NF4 storage
  // The flat buffer's ranges held here, ascending: [offset, offset + numel).
  std::vector<std::pair<int64_t, int64_t>> ranges() const;

  // Gives the model's fp32 copies of the held weights back to the operating system (their pages;
  // they read as zero afterwards): the frozen base then costs NF4's 4.13 bits per linear weight.
  void release_fp32(Model& model) const;
  // Writes the dequantized weights into the model's flat buffer (the base a merge starts from).
  void restore_fp32(Model& model) const;

 private:
  struct Entry {
    int64_t offset;
    ops::Nf4Tensor q;
  };
  // Calls f(entry, first value in it, count, output position) over [offset, offset + n).
  template <class F>
  void for_range(int64_t offset, int64_t n, F&& f) const;

  std::vector<Entry> entries_;  // ascending offset
  int64_t numel_ = 0;
};

}  // namespace kiln

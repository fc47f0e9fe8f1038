#include "kiln/core/tensor.h"

#include <cstdlib>
#include <cstring>

#include "kiln/core/error.h"

namespace kiln {

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

void* aligned_alloc64(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!p) fail("alloc", "out of memory allocating ", bytes, " bytes: use a smaller model or batch");
  return p;
}

void aligned_free(void* p) {
  std::free(p);
}

size_t Tensor::nbytes() const {
  int64_t n = numel();
  int blk = dtype_block(dtype_);
  return size_t((n + blk - 1) / blk) * dtype_size(dtype_);
}

Tensor Tensor::empty(Shape shape, DType dtype) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  for (auto d : t.shape_)
    KILN_CHECK(d >= 0, "tensor", "negative dimension in shape ", shape_str(t.shape_));
  void* p = aligned_alloc64(t.nbytes());
  t.storage_ = std::shared_ptr<void>(p, aligned_free);
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype) {
  Tensor t = empty(std::move(shape), dtype);
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::view(void* data, Shape shape, DType dtype, std::shared_ptr<void> keep) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.data_ = data;
  t.storage_ = std::move(keep);
  return t;
}

float* Tensor::f32() const {
  KILN_CHECK(dtype_ == DType::f32, "tensor", "expected an F32 tensor, got ", dtype_name(dtype_));
  return static_cast<float*>(data_);
}

Tensor Tensor::reshape(Shape shape) const {
  KILN_CHECK(shape_numel(shape) == numel(), "reshape", "cannot reshape ", shape_str(shape_), " to ",
             shape_str(shape), ": element counts differ");
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_);
  std::memcpy(t.data_, data_, nbytes());
  return t;
}

Tensor Tensor::to_f32() const {
  if (dtype_ == DType::f32) return clone();
  Tensor t = empty(shape_, DType::f32);
  float* out = t.f32();
  int64_t n = numel();
  const uint16_t* in = data<uint16_t>();
  if (dtype_ == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
  } else if (dtype_ == DType::f16) {
    for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(in[i]);
  } else {
    fail("tensor", "cannot convert ", dtype_name(dtype_), " to F32");
  }
  return t;
}

}  // namespace kiln

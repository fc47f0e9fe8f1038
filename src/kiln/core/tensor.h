// A Tensor is a shape, a dtype, a device and a pointer into shared storage. Ops take raw pointers
// and sizes (see ops/); Tensor is what owns memory and what io/ and model/ pass around.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/dtype.h"

namespace kiln {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "(4, 256)"
int64_t shape_numel(const Shape& s);

// 64-byte aligned host allocation (a cache line, one AVX-512 vector). Freed with aligned_free.
void* aligned_alloc64(size_t bytes);
void aligned_free(void* p);

class Tensor {
 public:
  Tensor() = default;

  // Fresh zero-filled host storage.
  static Tensor zeros(Shape shape, DType dtype = DType::f32);
  // Uninitialized host storage (cheaper; fill it before reading).
  static Tensor empty(Shape shape, DType dtype = DType::f32);
  // A view over memory someone else owns; `keep` keeps that owner alive (e.g. an mmap).
  static Tensor view(void* data, Shape shape, DType dtype, std::shared_ptr<void> keep = nullptr);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return int(shape_.size()); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const;
  bool defined() const { return data_ != nullptr; }

  void* raw() const { return data_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(data_);
  }
  float* f32() const;  // checks dtype == f32

  // Same storage, new shape with the same number of elements.
  Tensor reshape(Shape shape) const;
  // Deep copy with fresh storage (explicit, so the cost is visible).
  Tensor clone() const;
  // fp32 copy of an f32/bf16/f16 tensor.
  Tensor to_f32() const;

 private:
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  void* data_ = nullptr;
  std::shared_ptr<void> storage_;
};

}  // namespace kiln

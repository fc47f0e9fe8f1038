// The CUDA runtime as kiln uses it: checked calls, the device, streams and events, a caching
// device allocator, pinned host staging, and explicit host <-> device copies.
//
// Every CUDA, cuBLAS and NCCL call goes through a check that names the call and the kiln op it
// served, so a failure reads
//   [cuda rms_norm_forward] cudaLaunchKernel failed: invalid configuration argument (...)
// Nothing here runs without a GPU except available() / unavailable_reason(), which say why not.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/core/error.h"

namespace kiln::cuda {

// Device element types: activations are fp32 or bf16 (fp16 for GEMM inputs only); math is fp32.
using bf16 = __nv_bfloat16;
using f16 = __half;

// Throws Error("[cuda <op>] <call> failed: <CUDA's message> (<code name>)") unless err is
// cudaSuccess. Use the KILN_CUDA macro, which spells the call for you.
void check(cudaError_t err, const char* call, const char* op);
// After a kernel launch: the launch's own error (bad configuration, no kernel image for this GPU).
void check_launch(const char* op);

// Whether a CUDA device can be used (a driver and at least one GPU); asked once per process.
bool available();
// Why not, in words ("no CUDA driver: ..."), or "" when available.
std::string unavailable_reason();
// Throws Error naming the reason and the fix when !available(). `op` is the caller's name.
void require(const char* op);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for device 0; "" without a device.
std::string device_description();
int compute_capability();  // 90 for sm_90; 0 without a device
int sm_count();

// A non-blocking stream, owned. kiln runs one per role: compute and communication (streams()).
class Stream {
 public:
  Stream();  // cudaStreamNonBlocking
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  operator cudaStream_t() const { return s_; }
  void synchronize(const char* op = "stream") const;

 private:
  cudaStream_t s_ = nullptr;
};

// An event without timing (cheap) or with (for benchmarks).
class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }
  void record(cudaStream_t s);
  // Makes `s` wait for the last record() (device side: the host does not block).
  void wait_on(cudaStream_t s) const;
  void synchronize() const;  // host waits
  bool done() const;         // host asks without waiting
  // Milliseconds from `start` to this event (both recorded with timing).
  float since(const Event& start) const;

 private:
  cudaEvent_t e_ = nullptr;
};

// The process's streams, one per role, created on first use (device 0).
struct Streams {
  Stream compute;
  Stream comm;
};
Streams& streams();

// A caching allocator for device memory, like PyTorch's: freed blocks go back to a pool keyed by
// (stream, size) and are handed out again without cudaMalloc/cudaFree (which synchronize the
// device). Sizes round up to 512 bytes (small) or 2 MiB (large, >= 1 MiB). A block freed on one
// stream is reused only on that stream, so stream order makes reuse safe without events. When
// cudaMalloc runs out, the pool frees its cached blocks and tries once more; then the error names
// the request and what is in use.
//
// The bookkeeping is a plain class over any raw allocate/free pair so it is tested on the CPU.
class CachingPool {
 public:
  using RawAlloc = void* (*)(size_t bytes, void* ctx);  // nullptr when out of memory
  using RawFree = void (*)(void* p, void* ctx);
  CachingPool(RawAlloc alloc, RawFree free, void* ctx) : alloc_(alloc), free_(free), ctx_(ctx) {}
  ~CachingPool();
  CachingPool(const CachingPool&) = delete;
  CachingPool& operator=(const CachingPool&) = delete;

  static size_t round_size(size_t bytes);
  // Throws Error (naming `op`, the bytes and the pool's state) when even an emptied cache cannot
  // give the memory.
  void* allocate(size_t bytes, uintptr_t stream, const char* op);
  void release(void* p);  // back to the pool of the stream it was allocated on
  void empty_cache();     // returns every cached (free) block to the raw allocator

  struct Stats {
    size_t in_use = 0;    // bytes handed out (rounded sizes)
    size_t reserved = 0;  // bytes held from the raw allocator (in use + cached)
    size_t peak_in_use = 0;
    int64_t raw_allocs = 0;  // calls to the raw allocator
  };
  Stats stats() const;

 private:
  struct Impl;
  Impl& impl() const;
  RawAlloc alloc_;
  RawFree free_;
  void* ctx_;
  mutable Impl* impl_ = nullptr;
};

// The device allocator of this process (a CachingPool over cudaMalloc/cudaFree).
CachingPool& device_pool();
void* device_alloc(size_t bytes, cudaStream_t stream, const char* op);
void device_free(void* p);

// Typed device memory from device_pool(), owned; moves, never copies (copies are explicit).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t n, const char* op = "alloc", cudaStream_t s = nullptr)
      : n_(n), p_(n > 0 ? static_cast<T*>(device_alloc(size_t(n) * sizeof(T), s, op)) : nullptr) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : n_(o.n_), p_(o.p_) { o.n_ = 0, o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) reset(), n_ = o.n_, p_ = o.p_, o.n_ = 0, o.p_ = nullptr;
    return *this;
  }
  void reset() {
    if (p_) device_free(p_);
    p_ = nullptr, n_ = 0;
  }
  T* data() const { return p_; }
  int64_t size() const { return n_; }
  size_t bytes() const { return size_t(n_) * sizeof(T); }

 private:
  int64_t n_ = 0;
  T* p_ = nullptr;
};

// Page-locked host memory (cudaMallocHost), owned: the staging area for asynchronous copies.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept : bytes_(o.bytes_), p_(o.p_) { o.p_ = nullptr; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  // Grows (never shrinks) to at least `bytes`; contents are not kept.
  void reserve(size_t bytes);

 private:
  size_t bytes_ = 0;
  void* p_ = nullptr;
};

// Explicit copies. The synchronous forms stage through a pinned buffer and return when the data
// has arrived; the async forms need pinned (or device) memory on the host side and return at once.
void to_device(void* dst, const void* src, size_t bytes, cudaStream_t s,
               const char* op = "to_device");
void to_host(void* dst, const void* src, size_t bytes, cudaStream_t s, const char* op = "to_host");
void copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s,
                const char* op);
void fill_zero(void* dst, size_t bytes, cudaStream_t s, const char* op = "fill_zero");

template <typename T>
DeviceBuffer<T> upload(const T* host, int64_t n, cudaStream_t s, const char* op = "upload") {
  DeviceBuffer<T> d(n, op, s);
  to_device(d.data(), host, size_t(n) * sizeof(T), s, op);
  return d;
}

}  // namespace kiln::cuda

// KILN_CUDA("rms_norm", cudaMemsetAsync(p, 0, n, s)): runs the call and checks it.
#define KILN_CUDA(op, call) ::kiln::cuda::check((call), #call, (op))

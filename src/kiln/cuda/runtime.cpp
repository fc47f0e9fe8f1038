#include "kiln/cuda/runtime.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace kiln::cuda {

void check(cudaError_t err, const char* call, const char* op) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  throw Error(str("[cuda ", op, "] ", call, " failed: ", cudaGetErrorString(err), " (",
                  cudaGetErrorName(err), ")"));
}

void check_launch(const char* op) {
  check(cudaGetLastError(), "kernel launch", op);
}

namespace {

struct DeviceInfo {
  bool ok = false;
  std::string reason, description;
  int cc = 0, sms = 0;
};

const DeviceInfo& info() {
  static const DeviceInfo d = [] {
    DeviceInfo r;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      r.reason = str("no usable CUDA driver or device: ", cudaGetErrorString(err));
      cudaGetLastError();
      return r;
    }
    if (n == 0) {
      r.reason = "the CUDA driver sees no GPU";
      return r;
    }
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
      r.reason = "cudaGetDeviceProperties failed on device 0";
      cudaGetLastError();
      return r;
    }
    r.ok = true;
    r.cc = p.major * 10 + p.minor;
    r.sms = p.multiProcessorCount;
    r.description = str(p.name, " (sm_", r.cc, ", ", r.sms, " SMs, ",
                        double(p.totalGlobalMem) / double(1ull << 30), " GiB)");
    return r;
  }();
  return d;
}

}  // namespace

bool available() {
  return info().ok;
}
std::string unavailable_reason() {
  return info().ok ? "" : info().reason;
}
std::string device_description() {
  return info().description;
}
int compute_capability() {
  return info().cc;
}
int sm_count() {
  return info().sms;
}

void require(const char* op) {
  if (!available())
    fail(op, "device: cuda needs an NVIDIA GPU, and here there is none (", unavailable_reason(),
         "); run on a machine with a GPU and its driver, or use device: cpu");
}

// ---- streams and events ----

Stream::Stream() {
  KILN_CUDA("stream", cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
}
Stream::~Stream() {
  if (s_) cudaStreamDestroy(s_);
}
void Stream::synchronize(const char* op) const {
  KILN_CUDA(op, cudaStreamSynchronize(s_));
}

Event::Event(bool timing) {
  KILN_CUDA("event",
            cudaEventCreateWithFlags(&e_, timing ? cudaEventDefault : cudaEventDisableTiming));
}
Event::~Event() {
  if (e_) cudaEventDestroy(e_);
}
void Event::record(cudaStream_t s) {
  KILN_CUDA("event", cudaEventRecord(e_, s));
}
void Event::wait_on(cudaStream_t s) const {
  KILN_CUDA("event", cudaStreamWaitEvent(s, e_, 0));
}
void Event::synchronize() const {
  KILN_CUDA("event", cudaEventSynchronize(e_));
}
bool Event::done() const {
  cudaError_t err = cudaEventQuery(e_);
  if (err == cudaErrorNotReady) return false;
  KILN_CUDA("event", err);
  return true;
}
float Event::since(const Event& start) const {
  float ms = 0;
  KILN_CUDA("event", cudaEventElapsedTime(&ms, start.e_, e_));
  return ms;
}

Streams& streams() {
  static Streams* s = [] {
    require("cuda streams");
    return new Streams();  // lives for the process: destroyed streams at exit would race the driver
  }();
  return *s;
}

// ---- the caching pool ----

namespace {
constexpr size_t kSmallRound = 512, kLargeRound = size_t(2) << 20, kLargeFrom = size_t(1) << 20;
}

struct CachingPool::Impl {
  struct Block {
    size_t size;
    uintptr_t stream;
  };
  std::mutex mu;
  std::unordered_map<void*, Block> live;                              // handed out
  std::map<std::pair<uintptr_t, size_t>, std::vector<void*>> cached;  // (stream, size) -> free
  Stats stats;
};

CachingPool::Impl& CachingPool::impl() const {
  if (!impl_) impl_ = new Impl();
  return *impl_;
}

CachingPool::~CachingPool() {
  if (!impl_) return;
  empty_cache();
  delete impl_;
}

size_t CachingPool::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  size_t r = bytes < kLargeFrom ? kSmallRound : kLargeRound;
  return (bytes + r - 1) / r * r;
}

void* CachingPool::allocate(size_t bytes, uintptr_t stream, const char* op) {
  Impl& m = impl();
  std::lock_guard lock(m.mu);
  size_t size = round_size(bytes);
  // A cached block of this stream of the same size, or (large) up to 1/8 bigger.
  size_t most = size < kLargeFrom ? size : size + size / 8;
  auto it = m.cached.lower_bound({stream, size});
  void* p = nullptr;
  if (it != m.cached.end() && it->first.first == stream && it->first.second <= most) {
    size = it->first.second;
    p = it->second.back();
    it->second.pop_back();
    if (it->second.empty()) m.cached.erase(it);
  } else {
    p = alloc_(size, ctx_);
    if (!p) {  // give every cached block back and try once more
      for (auto& [key, ptrs] : m.cached)
        for (void* q : ptrs) free_(q, ctx_), m.stats.reserved -= key.second;
      m.cached.clear();
      p = alloc_(size, ctx_);
    }
    if (!p)
      fail(str("cuda ", op).c_str(), "out of device memory: asked for ", bytes, " bytes with ",
           m.stats.in_use, " in use (peak ", m.stats.peak_in_use,
           "); use a smaller micro-batch (train.micro_batch), activation recomputation or bf16");
    m.stats.reserved += size;
    m.stats.raw_allocs++;
  }
  m.live[p] = {size, stream};
  m.stats.in_use += size;
  if (m.stats.in_use > m.stats.peak_in_use) m.stats.peak_in_use = m.stats.in_use;
  return p;
}

void CachingPool::release(void* p) {
  if (!p) return;
  Impl& m = impl();
  std::lock_guard lock(m.mu);
  auto it = m.live.find(p);
  if (it == m.live.end()) fail("cuda free", "pointer ", p, " was not allocated by this pool");
  m.cached[{it->second.stream, it->second.size}].push_back(p);
  m.stats.in_use -= it->second.size;
  m.live.erase(it);
}

void CachingPool::empty_cache() {
  Impl& m = impl();
  std::lock_guard lock(m.mu);
  for (auto& [key, ptrs] : m.cached)
    for (void* q : ptrs) free_(q, ctx_), m.stats.reserved -= key.second;
  m.cached.clear();
}

CachingPool::Stats CachingPool::stats() const {
  Impl& m = impl();
  std::lock_guard lock(m.mu);
  return m.stats;
}

namespace {
void* cuda_raw_alloc(size_t bytes, void*) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return nullptr;
  }
  check(err, "cudaMalloc", "device_pool");
  return p;
}
void cuda_raw_free(void* p, void*) {
  cudaFree(p);
}
}  // namespace

CachingPool& device_pool() {
  // Never destroyed: blocks may outlive static destructors that would run after the driver's.
  static CachingPool* pool = new CachingPool(cuda_raw_alloc, cuda_raw_free, nullptr);
  return *pool;
}

void* device_alloc(size_t bytes, cudaStream_t stream, const char* op) {
  require(op);
  return device_pool().allocate(bytes, reinterpret_cast<uintptr_t>(stream), op);
}
void device_free(void* p) {
  device_pool().release(p);
}

// ---- pinned memory and copies ----

PinnedBuffer::PinnedBuffer(size_t bytes) {
  reserve(bytes);
}
PinnedBuffer::~PinnedBuffer() {
  if (p_) cudaFreeHost(p_);
}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (p_) cudaFreeHost(p_);
    p_ = o.p_, bytes_ = o.bytes_, o.p_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
void PinnedBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return;
  if (p_) cudaFreeHost(p_), p_ = nullptr;
  KILN_CUDA("pinned", cudaMallocHost(&p_, bytes));
  bytes_ = bytes;
}

void copy_async(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s,
                const char* op) {
  if (bytes) KILN_CUDA(op, cudaMemcpyAsync(dst, src, bytes, kind, s));
}

namespace {
// Synchronous copies go through one pinned staging buffer per thread, in 64 MiB pieces.
constexpr size_t kStage = size_t(64) << 20;
PinnedBuffer& staging() {
  thread_local PinnedBuffer b;
  b.reserve(kStage);
  return b;
}
}  // namespace

void to_device(void* dst, const void* src, size_t bytes, cudaStream_t s, const char* op) {
  PinnedBuffer& st = staging();
  for (size_t at = 0; at < bytes; at += kStage) {
    size_t n = std::min(kStage, bytes - at);
    std::memcpy(st.data(), static_cast<const char*>(src) + at, n);
    copy_async(static_cast<char*>(dst) + at, st.data(), n, cudaMemcpyHostToDevice, s, op);
    KILN_CUDA(op, cudaStreamSynchronize(s));  // the staging buffer is reused next piece
  }
}

void to_host(void* dst, const void* src, size_t bytes, cudaStream_t s, const char* op) {
  PinnedBuffer& st = staging();
  for (size_t at = 0; at < bytes; at += kStage) {
    size_t n = std::min(kStage, bytes - at);
    copy_async(st.data(), static_cast<const char*>(src) + at, n, cudaMemcpyDeviceToHost, s, op);
    KILN_CUDA(op, cudaStreamSynchronize(s));
    std::memcpy(static_cast<char*>(dst) + at, st.data(), n);
  }
}

void fill_zero(void* dst, size_t bytes, cudaStream_t s, const char* op) {
  if (bytes) KILN_CUDA(op, cudaMemsetAsync(dst, 0, bytes, s));
}

}  // namespace kiln::cuda

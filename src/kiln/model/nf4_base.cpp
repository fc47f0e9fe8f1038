#include "kiln/model/nf4_base.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/model/transformer.h"

namespace kiln {

Nf4Base::Nf4Base(const Model& model) {
  const float* w = model.weights().f32();
  for (const ParamInfo& p : model.params()) {
    if (!is_projection_weight(p.name, p.shape)) continue;
    KILN_CHECK(p.numel() % ops::kNf4Block == 0, "qlora", p.name, " has ", p.numel(),
               " values, not a multiple of ", ops::kNf4Block,
               ": NF4 quantizes whole blocks; use method: lora for this model");
    entries_.push_back({p.offset, ops::nf4_quantize(w + p.offset, p.numel())});
    numel_ += p.numel();
  }
  std::sort(entries_.begin(), entries_.end(),
            [](const Entry& a, const Entry& b) { return a.offset < b.offset; });
}

bool Nf4Base::holds(int64_t offset) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), offset,
                             [](const Entry& e, int64_t o) { return e.offset < o; });
  return it != entries_.end() && it->offset == offset;
}

template <class F>
void Nf4Base::for_range(int64_t offset, int64_t n, F&& f) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), offset,
                             [](const Entry& e, int64_t o) { return e.offset < o; });
  int64_t done = 0;
  for (; done < n && it != entries_.end() && it->offset == offset + done; ++it) {
    const int64_t take = std::min(n - done, it->q.numel);
    f(it->q, take, done);
    done += take;
  }
  KILN_CHECK(done == n, "qlora", "flat range [", offset, ", ", offset + n,
             ") is not a run of NF4 weights");
}

void Nf4Base::dequantize(int64_t offset, int64_t n, float* out) const {
  for_range(offset, n, [&](const ops::Nf4Tensor& q, int64_t take, int64_t at) {
    ops::nf4_dequantize(q, 0, take, out + at);
  });
}

void Nf4Base::dequantize_bf16(int64_t offset, int64_t n, uint16_t* out) const {
  for_range(offset, n, [&](const ops::Nf4Tensor& q, int64_t take, int64_t at) {
    ops::nf4_dequantize_bf16(q, 0, take, out + at);
  });
}

size_t Nf4Base::bytes() const {
  size_t b = 0;
  for (const Entry& e : entries_) b += e.q.bytes();
  return b;
}

std::vector<std::pair<int64_t, int64_t>> Nf4Base::ranges() const {
  std::vector<std::pair<int64_t, int64_t>> r;
  for (const Entry& e : entries_) r.emplace_back(e.offset, e.offset + e.q.numel);
  return r;
}

void Nf4Base::release_fp32(Model& model) const {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  float* w = model.weights().f32();
  for (const Entry& e : entries_) {
    float* begin = w + e.offset;
    std::memset(begin, 0, size_t(e.q.numel) * 4);  // the partial pages at the ends read as zero too
    const uintptr_t b = (uintptr_t(begin) + page - 1) & ~(page - 1);
    const uintptr_t end = uintptr_t(begin + e.q.numel) & ~(page - 1);
    if (end > b) madvise(reinterpret_cast<void*>(b), end - b, MADV_DONTNEED);
  }
}

void Nf4Base::restore_fp32(Model& model) const {
  float* w = model.weights().f32();
  for (const Entry& e : entries_) ops::nf4_dequantize(e.q, 0, e.q.numel, w + e.offset);
}

}  // namespace kiln

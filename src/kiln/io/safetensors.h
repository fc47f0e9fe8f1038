// safetensors, Hugging Face's tensor file: an 8-byte little-endian header length N, N bytes of JSON
// {"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}, then
// the data section, which the tensors tile exactly (no holes, no overlaps). Source of truth:
// github.com/huggingface/safetensors (safetensors/src/tensor.rs); files are byte-compatible.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/tensor.h"

namespace kiln {

struct SafeTensorsFile {
  std::string path;
  std::vector<std::string> names;               // in file order (by data offset)
  std::map<std::string, Tensor> tensors;        // views into the mapped file
  std::map<std::string, std::string> metadata;  // "__metadata__", empty if absent

  bool contains(const std::string& name) const { return tensors.count(name) != 0; }
  // Throws Error naming the missing tensor, the file, and a few names it does have.
  const Tensor& get(const std::string& name) const;
};

// Memory-maps `path` and validates the whole header before returning (see safetensors.cpp for
// every check). Cost: no tensor bytes are read; the tensors are copy-on-write Tensor::views whose
// keep pointer holds the mapping open. A tensor whose data is not aligned to its element size (a
// file written in an unusual order) is copied into fresh aligned storage instead.
SafeTensorsFile load_safetensors(const std::string& path);

// Writes the tensors in the given order, atomically (AtomicFile). The header is compact JSON,
// "__metadata__" first (omitted when empty, as Python's metadata=None), then each tensor's
// "dtype", "shape", "data_offsets", padded with spaces to a multiple of 8 bytes: byte-identical to
// the Python library's output for the same order. Python sorts by dtype size (largest first), then
// name, so every tensor is aligned; a caller that wants aligned zero-copy loads should do the same.
// Throws on duplicate names, the reserved name "__metadata__", non-CPU tensors, and dtypes with no
// safetensors spelling (q8_0, q4_0).
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln

#include "kiln/model/precision.h"

#include "kiln/core/error.h"

namespace kiln {

Precision precision_from_name(const std::string& n) {
  if (n == "fp32" || n == "float32") return Precision::fp32;
  if (n == "bf16" || n == "bfloat16") return Precision::bf16;
  if (n == "fp16" || n == "float16") return Precision::fp16;
  fail("precision", "unknown precision '", n, "': use fp32, bf16 or fp16");
}

Recompute recompute_from_name(const std::string& n) {
  if (n == "none") return Recompute::none;
  if (n == "selective") return Recompute::selective;
  if (n == "full") return Recompute::full;
  fail("recompute", "unknown recompute mode '", n, "': use none, selective or full");
}

const char* name_of(Precision p) {
  return p == Precision::fp32 ? "fp32" : p == Precision::bf16 ? "bf16" : "fp16";
}

const char* name_of(Recompute r) {
  return r == Recompute::none ? "none" : r == Recompute::selective ? "selective" : "full";
}

}  // namespace kiln

#include "kiln/model/bnb4bit.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/model/transformer.h"
#include "kiln/ops/nf4.h"

namespace kiln {
namespace {

// A copy of n values at p, as a tensor of `shape`.
template <class T>
Tensor copy_of(const T* p, Shape shape, DType dtype) {
  return Tensor::view(const_cast<T*>(p), std::move(shape), dtype).clone();
}

const char* kState[] = {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"};

}  // namespace

bool bnb4bit_quantizes(const std::string& name, const Shape& shape) {
  return is_projection_weight(name, shape) && shape_numel(shape) % ops::kNf4Block == 0;
}

std::vector<std::pair<std::string, Tensor>> bnb4bit_tensors(const std::string& name, const float* w,
                                                            const Shape& shape) {
  const ops::Nf4Tensor q = ops::nf4_quantize(w, shape_numel(shape));
  const nlohmann::json state = {{"quant_type", "nf4"},
                                {"blocksize", ops::kNf4Block},
                                {"dtype", "float32"},
                                {"shape", shape},
                                {"nested_blocksize", ops::kNf4ScaleBlock},
                                {"nested_dtype", "float32"},
                                {"nested_offset", q.offset}};
  const std::string js = state.dump();
  const int64_t n = q.numel;
  const DType u8 = DType::u8, f32 = DType::f32;
  return {
      {name, copy_of(q.codes.data(), {n / 2, 1}, u8)},
      {name + ".absmax", copy_of(q.scale_codes.data(), {q.blocks()}, u8)},
      {name + ".nested_absmax",
       copy_of(q.nested_absmax.data(), {int64_t(q.nested_absmax.size())}, f32)},
      {name + ".nested_quant_map", copy_of(ops::dynamic_map().data(), {256}, f32)},
      {name + ".quant_map", copy_of(ops::kNf4Levels, {16}, f32)},
      {name + kState[0], copy_of(js.data(), {int64_t(js.size())}, u8)},
  };
}

nlohmann::json bnb4bit_quantization_config() {
  return {{"quant_method", "bitsandbytes"},
          {"load_in_4bit", true},
          {"load_in_8bit", false},
          {"bnb_4bit_quant_type", "nf4"},
          {"bnb_4bit_use_double_quant", true},
          {"bnb_4bit_compute_dtype", "bfloat16"},
          {"bnb_4bit_quant_storage", "uint8"},
          {"llm_int8_skip_modules", {"lm_head"}}};
}

bool is_bnb4bit(const std::map<std::string, Tensor>& tensors, const std::string& name) {
  return tensors.count(name + kState[0]) || tensors.count(name + kState[1]);
}

void bnb4bit_dequantize(std::map<std::string, Tensor>& tensors, const std::string& name,
                        const Shape& shape, const std::string& file, float* out) {
  const std::string state_name = name + (tensors.count(name + kState[0]) ? kState[0] : kState[1]);
  auto get = [&](const std::string& suffix, DType dtype, int64_t numel) -> const Tensor& {
    auto it = tensors.find(name + suffix);
    KILN_CHECK(it != tensors.end(), "model", file, ": '", name + suffix,
               "' is missing: a bitsandbytes 4-bit weight needs it; re-save the checkpoint");
    KILN_CHECK(it->second.dtype() == dtype && (numel < 0 || it->second.numel() == numel), "model",
               file, ": '", name + suffix, "' is ", dtype_name(it->second.dtype()), " with ",
               it->second.numel(), " values; a 4-bit weight of shape ", shape_str(shape), " needs ",
               dtype_name(dtype), numel >= 0 ? " with " + std::to_string(numel) : "",
               ": the file is damaged or not this model's");
    return it->second;
  };
  const Tensor& st = get(state_name.substr(name.size()), DType::u8, -1);
  const nlohmann::json state = nlohmann::json::parse(
      std::string(reinterpret_cast<const char*>(st.raw()), size_t(st.numel())), nullptr, false);
  KILN_CHECK(state.is_object() && state.value("shape", nlohmann::json()) == nlohmann::json(shape),
             "model", file, ": '", state_name, "' does not describe a ", shape_str(shape),
             " weight: the file is not this model's");
  const int64_t n = shape_numel(shape);
  const int64_t bs = state.value("blocksize", int64_t(0));
  KILN_CHECK(bs > 0 && bs % 2 == 0 && bs <= (1 << 20), "model", file, ": '", state_name,
             "' has blocksize ", bs, "; bitsandbytes writes 32 to 4096");
  const int64_t blocks = (n + bs - 1) / bs;
  const bool nested = state.contains("nested_offset");
  const Tensor& codes = get("", DType::u8, (n + 1) / 2);
  const Tensor& qmap = get(".quant_map", DType::f32, 16);
  const float* levels = qmap.f32();
  std::vector<float> absmax(blocks);
  if (nested) {
    const int64_t nbs = state.value("nested_blocksize", int64_t(0));
    KILN_CHECK(nbs > 0 && nbs <= (1 << 20), "model", file, ": '", state_name,
               "' has nested_blocksize ", nbs);
    const Tensor& sc = get(".absmax", DType::u8, blocks);
    const Tensor& nab = get(".nested_absmax", DType::f32, (blocks + nbs - 1) / nbs);
    const Tensor& nmap = get(".nested_quant_map", DType::f32, 256);
    const float offset = state.value("nested_offset", 0.0f);
    const uint8_t* c = sc.data<uint8_t>();
    for (int64_t b = 0; b < blocks; ++b) absmax[b] = nmap.f32()[c[b]] * nab.f32()[b / nbs] + offset;
  } else {
    std::memcpy(absmax.data(), get(".absmax", DType::f32, blocks).raw(), size_t(blocks) * 4);
  }
  const uint8_t* q = codes.data<uint8_t>();
  parallel_ranges(n, 1 << 14, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const int code = i % 2 ? q[i / 2] & 15 : q[i / 2] >> 4;
      out[i] = levels[code] * absmax[i / bs];
    }
  });
  for (const char* s : {"", ".absmax", ".nested_absmax", ".nested_quant_map", ".quant_map"})
    tensors.erase(name + s);
  tensors.erase(state_name);
}

}  // namespace kiln

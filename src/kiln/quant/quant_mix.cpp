// llama-quantize's per-tensor choice (llama.cpp src/llama-quant.cpp: tensor_allows_quantization,
// llama_tensor_get_type_impl, tensor_type_fallback) restricted to what a Llama model without
// experts reaches under q8_0, q4_0 and the K mixes, with no importance matrix and no overrides.
#include "kiln/quant/quant_mix.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "kiln/core/error.h"
#include "kiln/quant/qtensor.h"

namespace kiln::quant {

using gguf::TensorType;

namespace {

struct GgufTypeInfo {
  GgufType type;
  std::string_view name;
  uint32_t file_type;
};
constexpr GgufTypeInfo kGgufTypes[] = {
    {GgufType::f32, "f32", 0},        {GgufType::f16, "f16", 1},
    {GgufType::q8_0, "q8_0", 7},      {GgufType::q4_0, "q4_0", 2},
    {GgufType::q2_k, "q2_k", 10},     {GgufType::q3_k_s, "q3_k_s", 11},
    {GgufType::q3_k_m, "q3_k_m", 12}, {GgufType::q3_k_l, "q3_k_l", 13},
    {GgufType::q4_k_s, "q4_k_s", 14}, {GgufType::q4_k_m, "q4_k_m", 15},
    {GgufType::q5_k_s, "q5_k_s", 16}, {GgufType::q5_k_m, "q5_k_m", 17},
    {GgufType::q6_k, "q6_k", 18},
};

// The block count of a tensor name ("blk.12.attn_v.weight" -> 12), -1 outside the blocks (the
// loader's sscanf("blk.%d.")).
int block_of(const std::string& name) {
  int layer = -1;
  std::sscanf(name.c_str(), "blk.%d.", &layer);
  return layer;
}

// The mix's default block type (llama_ftype_get_default_type).
TensorType default_type(GgufType t) {
  switch (t) {
    case GgufType::q8_0:
      return TensorType::q8_0;
    case GgufType::q4_0:
      return TensorType::q4_0;
    case GgufType::q2_k:
      return TensorType::q2_k;
    case GgufType::q3_k_s:
    case GgufType::q3_k_m:
    case GgufType::q3_k_l:
      return TensorType::q3_k;
    case GgufType::q4_k_s:
    case GgufType::q4_k_m:
      return TensorType::q4_k;
    case GgufType::q5_k_s:
    case GgufType::q5_k_m:
      return TensorType::q5_k;
    case GgufType::q6_k:
      return TensorType::q6_k;
    default:
      fail("quant", "internal: ", gguf_type_name(t), " is not a quantized type");
  }
}

// llama.cpp's "use more bits" layers: the first and last eighth, and every third in between.
bool use_more_bits(int i, int n) {
  return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

// llama-quantize's state while it walks the tensors: how many attn_v / ffn_down it has seen.
struct Walk {
  GgufType mix;
  MixModel m;
  bool tied = true;  // no output.weight: token_embd doubles as the output
  int n_attn_v = 0, i_attn_v = 0, i_ffn_down = 0;
};

// The output matrix (output.weight, or token_embd when tied): q6_k unless the mix is q8_0, and
// q8_0 when its rows are not a multiple of the mix's block.
TensorType output_type(TensorType dflt, int64_t cols) {
  if (cols % tensor_type_block(dflt) != 0) return TensorType::q8_0;
  return dflt == TensorType::q8_0 ? dflt : TensorType::q6_k;
}

TensorType attn_v_type(Walk& w, TensorType t) {
  const int gqa = w.m.heads / w.m.kv_heads;
  switch (w.mix) {
    case GgufType::q2_k:
      t = gqa >= 4 ? TensorType::q4_k : TensorType::q3_k;
      break;
    case GgufType::q3_k_m:
      t = w.i_attn_v < 2 ? TensorType::q5_k : TensorType::q4_k;
      break;
    case GgufType::q3_k_l:
      t = TensorType::q5_k;
      break;
    case GgufType::q4_k_m:
    case GgufType::q5_k_m:
      if (use_more_bits(w.i_attn_v, w.n_attn_v)) t = TensorType::q6_k;
      break;
    case GgufType::q4_k_s:
      if (w.i_attn_v < 4) t = TensorType::q5_k;
      break;
    default:
      break;
  }
  // Llama 2 70B (80 layers, grouped-query): its small attn_v gets more bits.
  const bool llama_70b = w.m.layers == 80 && w.m.heads != w.m.kv_heads;
  if (llama_70b && (t == TensorType::q3_k || t == TensorType::q4_k)) t = TensorType::q5_k;
  ++w.i_attn_v;
  return t;
}

TensorType ffn_down_type(Walk& w, TensorType t) {
  const int i = w.i_ffn_down++, n = w.m.layers;
  switch (w.mix) {
    case GgufType::q2_k:
      return TensorType::q3_k;
    case GgufType::q3_k_m:
      return i < n / 16 ? TensorType::q5_k : TensorType::q4_k;
    case GgufType::q3_k_l:
      return TensorType::q5_k;
    case GgufType::q4_k_m:
    case GgufType::q5_k_m:
      return use_more_bits(i, n) ? TensorType::q6_k : t;
    case GgufType::q4_k_s:
      return i < n / 8 ? TensorType::q5_k : t;
    default:
      return t;
  }
}

TensorType attn_output_type(const Walk& w, TensorType t) {
  switch (w.mix) {
    case GgufType::q2_k:
      return TensorType::q3_k;
    case GgufType::q3_k_m:
      return TensorType::q4_k;
    case GgufType::q3_k_l:
      return TensorType::q5_k;
    default:
      return t;
  }
}

// tensor_type_fallback: a type whose block does not divide the rows falls back to a 32-value one,
// and to f16 when 32 does not divide them either.
TensorType fallback(TensorType t, int64_t cols) {
  if (cols % tensor_type_block(t) == 0) return t;
  switch (t) {
    case TensorType::q2_k:
    case TensorType::q3_k:
      t = TensorType::q4_0;
      break;
    case TensorType::q4_k:
      t = TensorType::q5_0;
      break;
    case TensorType::q5_k:
      t = TensorType::q5_1;
      break;
    case TensorType::q6_k:
      t = TensorType::q8_0;
      break;
    default:
      break;
  }
  return cols % tensor_type_block(t) == 0 ? t : TensorType::f16;
}

bool contains(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

std::string_view gguf_type_name(GgufType t) {
  return kGgufTypes[size_t(t)].name;
}

GgufType gguf_type_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (const GgufTypeInfo& i : kGgufTypes)
    if (i.name == lower) return i.type;
  fail("gguf", "unknown GGUF type '", name,
       "': expected f32, f16, q8_0, q4_0 or a K-quant mix (q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, "
       "q4_k_m, q5_k_s, q5_k_m, q6_k)");
}

uint32_t gguf_file_type(GgufType t) {
  return kGgufTypes[size_t(t)].file_type;
}

bool gguf_type_from_file_type(int64_t file_type, GgufType* out) {
  for (const GgufTypeInfo& i : kGgufTypes)
    if (i.file_type == file_type) {
      *out = i.type;
      return true;
    }
  return false;
}

bool is_llama_quantize_type(GgufType t) {
  return t != GgufType::f32 && t != GgufType::f16;
}

void sort_like_llama_cpp(std::vector<MixTensor>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const MixTensor& a, const MixTensor& b) {
    const int la = block_of(a.name), lb = block_of(b.name);
    return la != lb ? la < lb : a.name < b.name;
  });
}

std::vector<TensorType> llama_quantize_types(GgufType type, const MixModel& m,
                                             const std::vector<MixTensor>& tensors) {
  KILN_CHECK(m.layers > 0 && m.heads > 0 && m.kv_heads > 0, "quant", "bad model shape (", m.layers,
             " layers, ", m.heads, " heads, ", m.kv_heads, " kv heads)");
  Walk w{type, m};
  for (const MixTensor& t : tensors) {
    if (t.name == "output.weight") w.tied = false;
    if (contains(t.name, "attn_v.weight")) ++w.n_attn_v;
  }
  const TensorType dflt = default_type(type);
  std::vector<TensorType> out;
  for (const MixTensor& t : tensors) {
    // tensor_allows_quantization: 2-D weights and 3-D stacked experts (ggml_n_dims: a trailing
    // dim of 1 does not count), not norms, not a Mixtral layer's router (ffn_gate_inp).
    const bool quantized = t.dims.size() >= 2 && t.dims[1] > 1 && t.name.size() >= 6 &&
                           t.name.compare(t.name.size() - 6, 6, "weight") == 0 &&
                           !contains(t.name, "_norm.weight") &&
                           !contains(t.name, "ffn_gate_inp.weight");
    if (!quantized) {
      out.push_back(TensorType::f32);
      continue;
    }
    const int64_t cols = t.dims[0];
    TensorType q = dflt;
    if (t.name == "output.weight" || (w.tied && t.name == "token_embd.weight")) {
      q = output_type(dflt, cols);
    } else if (contains(t.name, "attn_v.weight")) {
      q = attn_v_type(w, q);
    } else if (contains(t.name, "ffn_down")) {
      q = ffn_down_type(w, q);
    } else if (contains(t.name, "attn_output.weight")) {
      q = attn_output_type(w, q);
    }
    out.push_back(fallback(q, cols));
  }
  return out;
}

}  // namespace kiln::quant

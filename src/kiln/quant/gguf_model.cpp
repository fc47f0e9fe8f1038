#include "kiln/quant/gguf_model.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "kiln/core/dtype.h"
#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/core/log.h"
#include "kiln/core/parallel.h"
#include "kiln/io/file.h"
#include "kiln/io/gguf.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln::quant {

using gguf::TensorType;
using gguf::Value;
using gguf::ValueType;
using ordered_json = nlohmann::ordered_json;

namespace {

// A Mixtral layer's router, which llama.cpp keeps unquantized (ffn_gate_inp).
bool is_router(const std::string& gguf_name) {
  return gguf_name.find("ffn_gate_inp.weight") != std::string::npos;
}

// llama.cpp's token types (llama_token_type).
enum : int64_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };

// Where an HF parameter lives in a GGUF file: a tensor, or one expert's slice of a Mixtral
// layer's stacked expert tensor (llama.cpp's ffn_{gate,up,down}_exps, ggml dims
// {cols, rows, experts}: expert e's rows at e/experts of the bytes).
struct GgufPlace {
  std::string name;
  int expert = -1;  // the slice, or -1: the whole tensor
};

std::string gguf_name(const std::string& hf);

GgufPlace gguf_place(const std::string& hf) {
  static const std::pair<const char*, const char*> experts[] = {
      {"w1.weight", "ffn_gate_exps.weight"},
      {"w3.weight", "ffn_up_exps.weight"},
      {"w2.weight", "ffn_down_exps.weight"},
  };
  const std::string pre = "model.layers.", mid = ".block_sparse_moe.experts.";
  const size_t at = hf.find(mid);
  if (hf.rfind(pre, 0) != 0 || at == std::string::npos) return {gguf_name(hf), -1};
  const std::string layer = hf.substr(pre.size(), at - pre.size());
  const std::string rest = hf.substr(at + mid.size());  // "E.w1.weight"
  const size_t dot = rest.find('.');
  const int e = std::stoi(rest.substr(0, dot));
  for (const auto& [from, to] : experts)
    if (rest.substr(dot + 1) == from) return {"blk." + layer + "." + to, e};
  fail("gguf", "no GGUF name for parameter '", hf, "'");
}

// HF parameter name -> llama.cpp tensor name.
std::string gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> layer_names[] = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
  };
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (hf.rfind(pre, 0) == 0) {
    const size_t dot = hf.find('.', pre.size());
    const std::string layer = hf.substr(pre.size(), dot - pre.size()), rest = hf.substr(dot + 1);
    for (const auto& [from, to] : layer_names)
      if (rest == from) return "blk." + layer + "." + to;
  }
  fail("gguf", "no GGUF name for parameter '", hf, "'");
}

// Heads whose rows GGUF stores permuted: q (H heads) and k (K heads); 0 for other tensors.
int permuted_heads(const std::string& hf, const ModelConfig& c) {
  if (hf.find("self_attn.q_proj.weight") != std::string::npos) return c.heads;
  if (hf.find("self_attn.k_proj.weight") != std::string::npos) return c.kv_heads;
  return 0;
}

// convert_hf_to_gguf.py LlamaModel.permute: within each head of D rows, HF's rotate-half order
// (row i * D/2 + j, i in {0, 1}) becomes interleaved pairs (row 2j + i). Rows move whole, so
// this works on any row format (f32 or quantized bytes). to_gguf = false inverts it.
void permute_rows(const uint8_t* src, uint8_t* dst, int heads, int rows, size_t row_bytes,
                  bool to_gguf) {
  const int D = rows / heads, half = D / 2;
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < half; ++j) {
        const size_t hf = size_t(h) * D + size_t(i) * half + j, gg = size_t(h) * D + 2 * j + i;
        std::memcpy(dst + (to_gguf ? gg : hf) * row_bytes, src + (to_gguf ? hf : gg) * row_bytes,
                    row_bytes);
      }
}

std::vector<uint8_t> encode_tensor(const float* w, int64_t rows, int64_t cols, TensorType type) {
  const size_t n = size_t(rows * cols);
  std::vector<uint8_t> out;
  if (type == TensorType::f32) {
    out.resize(n * 4);
    std::memcpy(out.data(), w, n * 4);
  } else if (type == TensorType::f16) {
    out.resize(n * 2);
    auto* h = reinterpret_cast<uint16_t*>(out.data());
    parallel_ranges(int64_t(n), 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) h[i] = f32_to_f16(w[i]);
    });
  } else {
    QType q;
    KILN_CHECK(qtype_from_ggml(uint32_t(type), &q), "gguf", "internal: cannot encode ",
               tensor_type_name(type));
    out = quantize(w, int(rows), int(cols), q).data;
  }
  return out;
}

// Adds tokenizer.ggml.* (and kiln.tokenizer.* for an exact round trip of the split pattern).
void write_tokenizer(gguf::Writer& w, const Tokenizer& tok, const ModelConfig& c) {
  const Tokenizer::Impl& impl = tok.impl();
  KILN_CHECK(!impl.sp, "gguf",
             "exporting a SentencePiece tokenizer to GGUF is not supported yet: only byte-level "
             "BPE (tokenizer.ggml.model = gpt2)");
  KILN_CHECK(tok.vocab_size() <= c.vocab_size, "gguf", "the tokenizer has ", tok.vocab_size(),
             " tokens but the model's vocab_size is ", c.vocab_size,
             ": they belong to different models");
  const ordered_json j = ordered_json::parse(to_hf_json(impl));
  std::vector<std::string> tokens(size_t(c.vocab_size));
  std::vector<int64_t> types(size_t(c.vocab_size), kUnused);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = "[PAD" + std::to_string(i) + "]";
  for (const auto& [text, id] : j["model"]["vocab"].items()) {
    tokens[id.get<size_t>()] = text;
    types[id.get<size_t>()] = kNormal;
  }
  for (const auto& a : impl.added) {
    tokens[size_t(a.id)] = a.text;
    types[size_t(a.id)] = a.special ? kControl : kUserDefined;
  }
  std::vector<std::string> merges;
  for (const auto& m : j["model"]["merges"]) merges.push_back(m.get<std::string>());

  const Pattern p = impl.pre.pattern();
  // llama.cpp's pre-tokenizer names (llama-vocab.cpp) for kiln's patterns.
  const char* pre = p == Pattern::gpt2                               ? "gpt-2"
                    : (p == Pattern::llama3 || p == Pattern::cl100k) ? "llama-bpe"
                    : p == Pattern::o200k                            ? "gpt-4o"
                                                                     : "default";
  w.set("tokenizer.ggml.model", Value::str("gpt2"));
  w.set("tokenizer.ggml.pre", Value::str(pre));
  w.set("tokenizer.ggml.tokens", Value::str_array(std::move(tokens)));
  w.set("tokenizer.ggml.token_type", Value::int_array(ValueType::i32, std::move(types)));
  w.set("tokenizer.ggml.merges", Value::str_array(std::move(merges)));
  int bos = c.bos_token_id, eos = c.eos_token_id;
  if (eos < 0 && tok.eos_id()) eos = *tok.eos_id();
  if (bos >= 0) w.set("tokenizer.ggml.bos_token_id", Value::u32(uint32_t(bos)));
  if (eos >= 0) w.set("tokenizer.ggml.eos_token_id", Value::u32(uint32_t(eos)));
  w.set("tokenizer.ggml.add_bos_token", Value::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", Value::boolean(false));
  w.set("kiln.tokenizer.pattern", Value::str(pattern_name(p)));
  if (p == Pattern::custom) w.set("kiln.tokenizer.regex", Value::str(impl.pre.regex()));
  w.set("kiln.tokenizer.add_prefix_space", Value::boolean(impl.add_prefix_space));
  w.set("kiln.tokenizer.ignore_merges", Value::boolean(impl.bpe.ignore_merges()));
}

// Rebuilds a tokenizer.json from tokenizer.ggml.* and loads it.
Tokenizer read_tokenizer(const gguf::File& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  KILN_CHECK(model == "gpt2", "gguf", "'", f.path(), "': tokenizer.ggml.model is '", model,
             "'; kiln imports byte-level BPE ('gpt2') tokenizers only");
  const Value& tv = f.get("tokenizer.ggml.tokens");
  KILN_CHECK(tv.type == ValueType::array && tv.elem_type == ValueType::string, "gguf", "'",
             f.path(), "': tokenizer.ggml.tokens must be an array of strings");
  const auto& tokens = tv.strings;
  std::vector<int64_t> types(tokens.size(), kNormal);
  if (f.has("tokenizer.ggml.token_type")) {
    const Value& t = f.get("tokenizer.ggml.token_type");
    KILN_CHECK(t.type == ValueType::array && t.ints.size() == tokens.size(), "gguf", "'", f.path(),
               "': tokenizer.ggml.token_type has ", t.ints.size(), " entries but there are ",
               tokens.size(), " tokens");
    types = t.ints;
  }
  ordered_json added = ordered_json::array(), vocab = ordered_json::object();
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (types[id] == kUnused) continue;
    if (types[id] == kControl || types[id] == kUserDefined) {
      added.push_back({{"id", id},
                       {"content", tokens[id]},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", false},
                       {"special", types[id] == kControl}});
    } else {
      vocab[tokens[id]] = id;
    }
  }
  ordered_json merges = ordered_json::array();
  if (f.has("tokenizer.ggml.merges")) {
    const Value& m = f.get("tokenizer.ggml.merges");
    KILN_CHECK(m.type == ValueType::array && m.elem_type == ValueType::string, "gguf", "'",
               f.path(), "': tokenizer.ggml.merges must be an array of strings");
    for (const auto& s : m.strings) merges.push_back(s);
  }
  Pattern p = Pattern::gpt2;
  std::string regex;
  if (f.has("kiln.tokenizer.pattern")) {
    const std::string& name = f.get_string("kiln.tokenizer.pattern");
    if (name == "custom") {
      p = Pattern::custom;
      regex = f.get_string("kiln.tokenizer.regex");
    } else {
      auto known = pattern_from_name(name);
      KILN_CHECK(known, "gguf", "'", f.path(), "': unknown kiln.tokenizer.pattern '", name, "'");
      p = *known;
    }
  } else {
    const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "";
    if (pre == "llama-bpe" || pre == "llama3") {
      p = Pattern::llama3;
    } else if (pre == "gpt-4o") {
      p = Pattern::o200k;
    } else if (pre != "gpt-2") {
      log_warn("[gguf] '", f.path(), "': pre-tokenizer '", pre,
               "' is not one kiln knows; splitting text with GPT-2's pattern");
    }
  }
  auto flag = [&](const char* key, bool dflt) { return f.has(key) ? f.get(key).b : dflt; };
  auto byte_level = [](bool prefix, bool use_regex) {
    return ordered_json{{"type", "ByteLevel"},
                        {"add_prefix_space", prefix},
                        {"trim_offsets", true},
                        {"use_regex", use_regex}};
  };
  const bool prefix = flag("kiln.tokenizer.add_prefix_space", false);
  ordered_json j;
  j["version"] = "1.0";
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  if (p == Pattern::none || p == Pattern::gpt2) {
    j["pre_tokenizer"] = byte_level(prefix, p == Pattern::gpt2);
  } else {
    if (p != Pattern::custom) regex = pattern_regex(p);
    ordered_json split = {{"type", "Split"},
                          {"pattern", {{"Regex", regex}}},
                          {"behavior", "Isolated"},
                          {"invert", false}};
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", {split, byte_level(prefix, false)}}};
  }
  j["post_processor"] = nullptr;
  j["decoder"] = byte_level(true, true);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", flag("kiln.tokenizer.ignore_merges", p == Pattern::llama3)},
                {"vocab", vocab},
                {"merges", merges}};
  return make_tokenizer(load_hf_json(f.path() + " (tokenizer.ggml.*)", j.dump()));
}

// Decodes `t` (any supported type) into rows x cols floats.
void decode_tensor(const gguf::TensorInfo& t, float* out) {
  const int64_t n = t.numel();
  switch (t.type) {
    case TensorType::f32:
      std::memcpy(out, t.data, size_t(n) * 4);
      break;
    case TensorType::f16:
    case TensorType::bf16:
      parallel_ranges(n, 1 << 16, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          uint16_t h;
          std::memcpy(&h, t.data + i * 2, 2);
          out[i] = t.type == TensorType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
      });
      break;
    default: {
      QType q;
      KILN_CHECK(qtype_from_ggml(uint32_t(t.type), &q), "gguf", "internal: no decoder for ",
                 tensor_type_name(t.type));
      const size_t bb = block_bytes(q);
      const int be = block_elems(q);
      parallel_ranges(n / be, 4096 / be, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) dequantize_block(t.data + i * bb, out + i * be, q);
      });
      break;
    }
  }
}

// llama.cpp's name for a general.file_type value (llama_ftype), lower case.
std::string file_type_name(int64_t ftype) {
  static const std::map<int64_t, const char*> names = {
      {0, "f32"},     {1, "f16"},     {2, "q4_0"},    {3, "q4_1"},    {7, "q8_0"},
      {8, "q5_0"},    {9, "q5_1"},    {10, "q2_k"},   {11, "q3_k_s"}, {12, "q3_k_m"},
      {13, "q3_k_l"}, {14, "q4_k_s"}, {15, "q4_k_m"}, {16, "q5_k_s"}, {17, "q5_k_m"},
      {18, "q6_k"},   {21, "q2_k_s"}, {32, "bf16"}};
  const auto it = names.find(ftype);
  return it != names.end() ? it->second : "file_type " + std::to_string(ftype);
}

// A positive dimension from the metadata, within its limit from core/limits.h.
int get_dim(const gguf::File& f, const std::string& key, int64_t max) {
  const int64_t v = f.get_int(key);
  KILN_CHECK(v > 0, "gguf", "'", f.path(), "': ", key, " = ", v, " must be positive");
  limits::check_limit("gguf", str("'", f.path(), "'"), key, v, max);
  return int(v);
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Every tensor the config implies is in the file with the implied shape. Runs before the model is
// allocated: the tensors' sizes were checked against the file's on open, so a tiny file whose
// metadata claims a huge model fails here instead of allocating it.
void check_tensor_shapes(const gguf::File& f, const ModelConfig& c) {
  for (const ParamInfo& p : param_layout(c)) {
    const GgufPlace at = gguf_place(p.name);
    const std::string& name = at.name;
    const gguf::TensorInfo& t = f.tensor(name);
    std::vector<int64_t> want(p.shape.rbegin(), p.shape.rend());  // ggml order
    if (at.expert >= 0) want.push_back(c.moe.experts);
    KILN_CHECK(t.dims == want, "gguf", "'", f.path(), "': tensor '", name, "' has shape ",
               dims_str(t.dims), " (ggml order) but the metadata implies ", dims_str(want),
               ": the metadata disagrees with the tensors");
  }
}

// The quantizers' scale searches assume finite weights (llama-quantize refuses others on load).
void check_finite(const std::string& name, const float* w, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows * cols; ++i)
    KILN_CHECK(std::isfinite(w[i]), "export", "tensor '", name, "' holds ", w[i], " at row ",
               i / cols, ", column ", i % cols,
               ": quantizing needs finite weights; the model is broken (re-train or fix it), or "
               "export it as f32");
}

}  // namespace

void export_gguf(const Model& model, const Tokenizer& tok, const std::string& path, GgufType type,
                 const std::string& chat_template) {
  const ModelConfig& c = model.config();
  KILN_CHECK(c.arch == Arch::llama, "export",
             "GGUF export supports the Llama family; this model "
             "is GPT-2 (export it as safetensors instead)");
  using K = ops::RopeScaling::Kind;
  KILN_CHECK(c.rope_scaling.kind == K::none || c.rope_scaling.kind == K::linear, "export",
             "rope_scaling other than linear is not supported in GGUF export yet");
  KILN_CHECK(c.head_dim % 2 == 0, "export", "head_dim ", c.head_dim, " must be even for RoPE");
  gguf::Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.set("general.name", Value::str("kiln"));
  w.set("general.alignment", Value::u32(32));
  // llama-quantize copies the f32 file's keys and appends these two (the f32 export's
  // general.file_type moves to the end): a quantized type writes them last so the bytes match.
  const bool llama_layout = is_llama_quantize_type(type);
  if (!llama_layout) w.set("general.file_type", Value::u32(gguf_file_type(type)));
  w.set("llama.vocab_size", Value::u32(uint32_t(c.vocab_size)));
  w.set("llama.context_length", Value::u32(uint32_t(c.max_positions)));
  w.set("llama.embedding_length", Value::u32(uint32_t(c.hidden)));
  w.set("llama.block_count", Value::u32(uint32_t(c.layers)));
  w.set("llama.feed_forward_length", Value::u32(uint32_t(c.intermediate)));
  w.set("llama.attention.head_count", Value::u32(uint32_t(c.heads)));
  w.set("llama.attention.head_count_kv", Value::u32(uint32_t(c.kv_heads)));
  w.set("llama.rope.freq_base", Value::f32(c.rope_theta));
  w.set("llama.attention.layer_norm_rms_epsilon", Value::f32(c.norm_eps));
  w.set("llama.rope.dimension_count", Value::u32(uint32_t(c.head_dim)));
  if (c.moe.enabled()) {
    w.set("llama.expert_count", Value::u32(uint32_t(c.moe.experts)));
    w.set("llama.expert_used_count", Value::u32(uint32_t(c.moe.experts_per_tok)));
  }
  w.set("llama.attention.key_length", Value::u32(uint32_t(c.head_dim)));
  w.set("llama.attention.value_length", Value::u32(uint32_t(c.head_dim)));
  if (c.rope_scaling.kind == K::linear) {
    w.set("llama.rope.scaling.type", Value::str("linear"));
    w.set("llama.rope.scaling.factor", Value::f32(c.rope_scaling.factor));
  }
  write_tokenizer(w, tok, c);
  if (!chat_template.empty()) w.set("tokenizer.chat_template", Value::str(chat_template));
  if (llama_layout) {
    w.set("general.quantization_version", Value::u32(2));  // GGML_QNT_VERSION
    w.set("general.file_type", Value::u32(gguf_file_type(type)));
  }

  // The tensors (GGUF names, ggml dims), in llama.cpp's order when quantized, and their types;
  // each holds one parameter, or a Mixtral layer's experts stacked in expert order.
  std::vector<MixTensor> tensors;
  std::map<std::string, std::vector<const ParamInfo*>> params_of;
  for (const ParamInfo& p : model.params()) {
    const GgufPlace at = gguf_place(p.name);
    std::vector<const ParamInfo*>& parts = params_of[at.name];
    parts.push_back(&p);
    if (parts.size() > 1) continue;  // a later expert of a stacked tensor
    MixTensor t{at.name, {}};
    t.dims = p.shape.size() == 1 ? std::vector<int64_t>{p.shape[0]}
                                 : std::vector<int64_t>{p.shape[1], p.shape[0]};
    if (at.expert >= 0) t.dims.push_back(c.moe.experts);
    tensors.push_back(std::move(t));
  }
  std::vector<TensorType> types;
  if (llama_layout) {
    sort_like_llama_cpp(tensors);
    types = llama_quantize_types(type, {c.layers, c.heads, c.kv_heads}, tensors);
  } else {
    for (const MixTensor& t : tensors)
      types.push_back(t.dims.size() == 1 || type == GgufType::f32 || is_router(t.name)
                          ? TensorType::f32
                          : TensorType::f16);
  }
  const float* flat = model.weights().f32();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::vector<const ParamInfo*>& parts = params_of.at(tensors[i].name);
    const ParamInfo& p = *parts[0];
    const float* src = flat + p.offset;
    const int64_t cols = tensors[i].dims[0];
    const int64_t part_rows = p.shape.size() == 1 ? 1 : p.shape[0];
    const int64_t rows = part_rows * int64_t(parts.size());
    std::vector<float> stacked;
    if (parts.size() > 1) {  // the experts' matrices one after another
      stacked.resize(size_t(rows * cols));
      for (size_t e = 0; e < parts.size(); ++e)
        std::memcpy(stacked.data() + e * size_t(part_rows * cols), flat + parts[e]->offset,
                    size_t(part_rows * cols) * sizeof(float));
      src = stacked.data();
    }
    std::vector<float> permuted;
    if (int heads = permuted_heads(p.name, c)) {
      permuted.resize(size_t(rows * cols));
      permute_rows(reinterpret_cast<const uint8_t*>(src),
                   reinterpret_cast<uint8_t*>(permuted.data()), heads, int(rows), size_t(cols) * 4,
                   true);
      src = permuted.data();
    }
    if (types[i] != TensorType::f32 && types[i] != TensorType::f16)
      check_finite(tensors[i].name, src, rows, cols);
    w.add_tensor(tensors[i].name, tensors[i].dims, types[i],
                 encode_tensor(src, rows, cols, types[i]));
  }
  w.write(path);
}

bool is_gguf_path(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return fs::exists(path + "/model.gguf", ec);
  return path.size() >= 5 && path.substr(path.size() - 5) == ".gguf";
}

GgufModel load_gguf_model(const std::string& path, bool keep_quantized) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool dir = fs::is_directory(path, ec);
  const std::string file = dir ? path + "/model.gguf" : path;
  const gguf::File f = gguf::File::open(file);
  const std::string& src = f.path();
  const std::string& arch = f.get_string("general.architecture");
  KILN_CHECK(arch == "llama", "gguf", "'", src, "': general.architecture is '", arch,
             "'; kiln imports 'llama' models");

  ModelConfig c;
  c.arch = Arch::llama;
  const gguf::TensorInfo& emb = f.tensor("token_embd.weight");
  KILN_CHECK(emb.dims.size() == 2, "gguf", "'", src, "': token_embd.weight has ", emb.dims.size(),
             " dimensions, expected 2");
  c.hidden = get_dim(f, "llama.embedding_length", limits::kMaxHidden);
  KILN_CHECK(emb.dims[0] == c.hidden, "gguf", "'", src, "': llama.embedding_length is ", c.hidden,
             " but token_embd.weight has rows of ", emb.dims[0],
             ": the metadata disagrees with the tensors");
  limits::check_limit("gguf", str("'", src, "'"), "token_embd.weight's row count", emb.dims[1],
                      limits::kMaxVocab);
  c.vocab_size = int(emb.dims[1]);
  if (f.has("llama.vocab_size"))
    KILN_CHECK(f.get_int("llama.vocab_size") == c.vocab_size, "gguf", "'", src,
               "': llama.vocab_size is ", f.get_int("llama.vocab_size"),
               " but token_embd.weight has ", c.vocab_size, " rows");
  c.layers = get_dim(f, "llama.block_count", limits::kMaxLayers);
  c.heads = get_dim(f, "llama.attention.head_count", limits::kMaxHeads);
  c.kv_heads = f.has("llama.attention.head_count_kv")
                   ? get_dim(f, "llama.attention.head_count_kv", limits::kMaxHeads)
                   : c.heads;
  c.head_dim = f.has("llama.attention.key_length")
                   ? get_dim(f, "llama.attention.key_length", limits::kMaxHidden)
                   : c.hidden / c.heads;
  if (f.has("llama.rope.dimension_count"))
    KILN_CHECK(get_dim(f, "llama.rope.dimension_count", limits::kMaxHidden) == c.head_dim, "gguf",
               "'", src, "': llama.rope.dimension_count is ",
               f.get_int("llama.rope.dimension_count"), " but heads have ", c.head_dim,
               " dims; partial RoPE is not supported");
  c.intermediate = get_dim(f, "llama.feed_forward_length", limits::kMaxFfn);
  if (f.has("llama.expert_count") && f.get_int("llama.expert_count") > 0) {
    c.moe.experts = get_dim(f, "llama.expert_count", limits::kMaxExperts);
    c.moe.experts_per_tok = get_dim(f, "llama.expert_used_count", limits::kMaxExperts);
  }
  c.max_positions = get_dim(f, "llama.context_length", limits::kMaxContext);
  c.norm_eps = float(f.get_float("llama.attention.layer_norm_rms_epsilon"));
  c.rope_theta = f.has("llama.rope.freq_base") ? float(f.get_float("llama.rope.freq_base")) : 1e4f;
  if (f.has("llama.rope.scaling.type")) {
    const std::string& t = f.get_string("llama.rope.scaling.type");
    if (t == "linear") {
      c.rope_scaling.kind = ops::RopeScaling::Kind::linear;
      c.rope_scaling.factor = float(f.get_float("llama.rope.scaling.factor"));
    } else {
      KILN_CHECK(t == "none", "gguf", "'", src, "': llama.rope.scaling.type '", t,
                 "' is not supported (none, linear)");
    }
  }
  c.tie_embeddings = f.find_tensor("output.weight") == nullptr;
  for (auto [key, id] : {std::pair{"tokenizer.ggml.bos_token_id", &c.bos_token_id},
                         std::pair{"tokenizer.ggml.eos_token_id", &c.eos_token_id}}) {
    if (!f.has(key)) continue;
    limits::check_limit("gguf", str("'", src, "'"), key, f.get_int(key), limits::kMaxVocab - 1);
    *id = int(f.get_int(key));
  }
  c.validate(src);
  check_tensor_shapes(f, c);

  GgufModel out;
  const int64_t ftype = f.has("general.file_type") ? f.get_int("general.file_type") : 0;
  if (!gguf_type_from_file_type(ftype, &out.type)) out.type = GgufType::f32;
  out.file_type = file_type_name(ftype);
  out.model = std::make_unique<Model>(c);
  float* flat = out.model->weights().f32();
  std::set<std::string> used;
  for (const ParamInfo& p : out.model->params()) {
    const GgufPlace at = gguf_place(p.name);
    const std::string& name = at.name;
    gguf::TensorInfo t = f.tensor(name);
    used.insert(name);
    if (at.expert >= 0) {  // this expert's slice (check_tensor_shapes saw the stacked shape)
      const size_t bytes = t.nbytes() / size_t(c.moe.experts);
      t.dims.pop_back();
      t.data += size_t(at.expert) * bytes;
    }
    float* dst = flat + p.offset;
    const int heads = permuted_heads(p.name, c);
    const int64_t rows = p.shape[0], cols = p.shape.size() > 1 ? p.shape[1] : 1;
    if (heads) {
      std::vector<float> tmp(size_t(t.numel()));
      decode_tensor(t, tmp.data());
      permute_rows(reinterpret_cast<const uint8_t*>(tmp.data()), reinterpret_cast<uint8_t*>(dst),
                   heads, int(rows), size_t(cols) * 4, false);
    } else {
      decode_tensor(t, dst);
    }
    QType qtype;
    if (keep_quantized && p.shape.size() == 2 && qtype_from_ggml(uint32_t(t.type), &qtype)) {
      QTensor q;
      q.type = qtype;
      q.rows = int(rows);
      q.cols = int(cols);
      q.data.resize(t.nbytes());
      if (heads) {
        permute_rows(t.data, q.data.data(), heads, q.rows, q.row_bytes(), false);
      } else {
        std::memcpy(q.data.data(), t.data, t.nbytes());
      }
      out.qweights.emplace(p.name, std::move(q));
    }
  }
  for (const auto& t : f.tensors())
    KILN_CHECK(used.count(t.name), "gguf", "'", src, "' has tensor '", t.name,
               "', which is not part of a Llama model with llama.block_count = ", c.layers,
               ": the metadata disagrees with the tensors");

  if (dir && file_exists(path + "/tokenizer.json")) {
    out.tokenizer = Tokenizer::load(path + "/tokenizer.json");
  } else {
    out.tokenizer = read_tokenizer(f);
    KILN_CHECK(out.tokenizer.vocab_size() <= c.vocab_size, "gguf", "'", src,
               "': the tokenizer has ", out.tokenizer.vocab_size(),
               " tokens but token_embd.weight has ", c.vocab_size,
               " rows: the metadata disagrees with the tensors");
  }
  return out;
}

namespace {

// Writes out_dir from model_dir's model (write(model, tokenizer, dir) adds the weights and
// config.json) and tokenizer files, built beside it and renamed: a crash leaves no half-written
// output directory.
void write_quantized_dir(
    const std::string& model_dir, const std::string& out_dir,
    const std::function<void(const Model&, const Tokenizer&, const std::string&)>& write) {
  namespace fs = std::filesystem;
  KILN_CHECK(!file_exists(out_dir), "quantize", "output '", out_dir,
             "' already exists: choose another path or remove it");
  KILN_CHECK(file_exists(model_dir + "/tokenizer.json"), "quantize", "no tokenizer.json in '",
             model_dir, "': the checkpoint is incomplete");
  auto model = load_model(model_dir);
  Tokenizer tok = Tokenizer::load(model_dir + "/tokenizer.json");
  const std::string tmp = out_dir + ".tmp-" + std::to_string(getpid());
  fs::remove_all(tmp);
  try {
    make_dirs(tmp);
    write_file_atomic(tmp + "/tokenizer.json", read_file(model_dir + "/tokenizer.json"));
    if (file_exists(model_dir + "/tokenizer_config.json"))
      write_file_atomic(tmp + "/tokenizer_config.json",
                        read_file(model_dir + "/tokenizer_config.json"));
    write(*model, tok, tmp);
    std::error_code ec;
    fs::rename(tmp, out_dir, ec);
    KILN_CHECK(!ec, "quantize", "cannot rename '", tmp, "' to '", out_dir, "': ", ec.message());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace

void quantize_model_dir(const std::string& model_dir, GgufType type, const std::string& out_dir) {
  write_quantized_dir(
      model_dir, out_dir, [&](const Model& model, const Tokenizer& tok, const std::string& dir) {
        write_file_atomic(dir + "/config.json", read_file(model_dir + "/config.json"));
        export_gguf(model, tok, dir + "/model.gguf", type, chat_template_source(model_dir));
      });
}

void quantize_model_dir_nf4(const std::string& model_dir, const std::string& out_dir) {
  write_quantized_dir(model_dir, out_dir,
                      [](const Model& model, const Tokenizer&, const std::string& dir) {
                        save_model_bnb4bit(model, dir);
                      });
}

}  // namespace kiln::quant

#include "kiln/model/model_io.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>

#include "kiln/core/checked_math.h"
#include "kiln/core/error.h"
#include "kiln/io/checksums.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/bnb4bit.h"
#include "kiln/ops/matmul_bf16.h"

namespace kiln {

namespace {

// A shard's runs metadata: JSON [[offset into the full buffer, length], ...], values unchecked.
std::vector<std::pair<int64_t, int64_t>> shard_runs(const std::string& path, const std::string& key,
                                                    const std::string& text) {
  check_json_depth("checkpoint", path, text);
  std::vector<std::pair<int64_t, int64_t>> runs;
  try {
    for (const auto& run : nlohmann::json::parse(text))
      runs.emplace_back(run.at(0).get<int64_t>(), run.at(1).get<int64_t>());
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint", path, ": metadata '", key, "' is not a list of [offset, length] runs (",
         json_error_reason(e), "); the checkpoint is damaged");
  }
  return runs;
}

}  // namespace

void load_sharded_buffers(const std::string& dir, const Model& model,
                          const std::vector<ShardedBuffer>& buffers) {
  const nlohmann::json manifest = read_json_file(dir + "/manifest.json");
  int64_t params = 0;
  std::vector<std::string> files;
  try {
    params = manifest.at("params").get<int64_t>();
    files = manifest.at("files").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint", dir, "/manifest.json is malformed (", e.what(),
         "); resume from an earlier checkpoint");
  }
  const int64_t P = model.num_params();
  KILN_CHECK(params == P, "checkpoint", dir, ": the sharded checkpoint holds ", params,
             " parameters, the model has ", P, ": the checkpoint belongs to another model");
  // How often each element of each buffer was written: exactly once, or a shard is missing.
  std::vector<std::vector<uint8_t>> seen(buffers.size(), std::vector<uint8_t>(size_t(P), 0));
  for (const std::string& f : files) {
    const std::string path = dir + "/" + f;
    KILN_CHECK(file_exists(path), "checkpoint", path,
               " is listed in manifest.json but missing: the sharded checkpoint is incomplete; ",
               "copy the file back or resume from an earlier checkpoint");
    auto st = load_safetensors(path);
    for (size_t b = 0; b < buffers.size(); ++b) {
      const ShardedBuffer& buf = buffers[b];
      const Tensor& t = st.get(buf.tensor);
      auto it = st.metadata.find(buf.runs_key);
      KILN_CHECK(it != st.metadata.end() && t.dtype() == DType::f32, "checkpoint", path,
                 ": not a kiln shard (no '", buf.runs_key, "'); the checkpoint is damaged");
      int64_t at = 0;
      for (const auto& [full, n] : shard_runs(path, buf.runs_key, it->second)) {
        // Overflow-safe: the file chooses full and n, and full + n must not wrap past the check.
        const auto end = checked_add(full, n), at_end = checked_add(at, n);
        KILN_CHECK(full >= 0 && n >= 0 && end && *end <= P && at_end && *at_end <= t.numel(),
                   "checkpoint", path, ": ", buf.runs_key, " has a run of ", n, " parameters from ",
                   full, " (shard offset ", at, "), outside the model's ", P,
                   " parameters or the shard's ", t.numel(), " values; the checkpoint is damaged");
        std::memcpy(buf.flat + full, t.f32() + at, size_t(n) * sizeof(float));
        for (int64_t i = full; i < *end; ++i) ++seen[b][size_t(i)];
        at = *at_end;
      }
    }
  }
  for (size_t b = 0; b < buffers.size(); ++b) {
    auto bad = std::find_if(seen[b].begin(), seen[b].end(), [](uint8_t c) { return c != 1; });
    if (bad == seen[b].end()) continue;
    const int64_t i = bad - seen[b].begin();
    std::string name;
    for (const ParamInfo& p : model.params())
      if (i >= p.offset && i < p.offset + p.numel()) name = p.name;
    fail("checkpoint", dir, ": ", buffers[b].tensor, " element ", i, " (", name, ") is in ",
         int(*bad), " shards instead of 1: a shard file is missing from manifest.json's list or ",
         "the checkpoint is damaged; resume from an earlier checkpoint");
  }
}

namespace {

// The tensors of a model directory's safetensors file(s), memory-mapped: nothing is copied yet.
struct WeightFiles {
  std::vector<std::string> files;
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> origin;  // tensor name -> its file
  std::vector<SafeTensorsFile> keep;          // holds the mappings open
};

// One file, or shards named by an index's weight_map.
WeightFiles open_weight_files(const std::string& dir) {
  verify_checksums(dir, {"model.safetensors", "model.safetensors.index.json"});
  WeightFiles wf;
  if (file_exists(dir + "/model.safetensors")) {
    wf.files.push_back(dir + "/model.safetensors");
  } else if (file_exists(dir + "/model.safetensors.index.json")) {
    auto index = read_json_file(dir + "/model.safetensors.index.json");
    KILN_CHECK(index.contains("weight_map") && index["weight_map"].is_object(), "model", dir,
               "/model.safetensors.index.json has no weight_map object");
    std::map<std::string, bool> seen;
    for (auto& [name, file] : index["weight_map"].items()) {
      std::string f = file.get<std::string>();
      if (!seen[f]) wf.files.push_back(dir + "/" + f);
      seen[f] = true;
    }
  } else {
    fail("model", "no model.safetensors in '", dir, "': the checkpoint is incomplete; re-save it");
  }
  for (const auto& f : wf.files) {
    wf.keep.push_back(load_safetensors(f));
    for (auto& [name, t] : wf.keep.back().tensors) {
      wf.tensors[name] = t;
      wf.origin[name] = f;
    }
  }
  return wf;
}

// Every parameter of `layout` is in the files with its shape. load_model runs this before the
// model is allocated: the tensors' sizes were checked against the files' on open, so a small
// checkpoint whose config.json claims a huge model fails here instead of allocating it.
void check_weight_shapes(const std::vector<ParamInfo>& layout, const WeightFiles& wf) {
  for (const ParamInfo& p : layout) {
    if (is_bnb4bit(wf.tensors, p.name)) continue;  // its shape is in its quant state
    auto it = wf.tensors.find(p.name);
    KILN_CHECK(it != wf.tensors.end(), "model", "tensor '", p.name, "' is missing from ",
               wf.files[0],
               ": the weights do not match config.json (wrong architecture or layer count?)");
    const Tensor& t = it->second;
    KILN_CHECK(t.shape() == p.shape, "model", "tensor '", p.name, "' in ", wf.origin.at(p.name),
               " has shape ", shape_str(t.shape()), " but config.json implies ", shape_str(p.shape),
               ": the config and the weights disagree");
  }
}

void copy_weights(Model& model, WeightFiles& wf) {
  check_weight_shapes(model.params(), wf);
  float* w = model.weights().f32();
  for (const ParamInfo& p : model.params()) {
    if (is_bnb4bit(wf.tensors, p.name)) {
      bnb4bit_dequantize(wf.tensors, p.name, p.shape, wf.origin.at(p.name), w + p.offset);
      continue;
    }
    const Tensor& t = wf.tensors.at(p.name);
    if (t.dtype() == DType::f32) {
      std::memcpy(w + p.offset, t.raw(), p.numel() * sizeof(float));
    } else {
      Tensor f = t.to_f32();
      std::memcpy(w + p.offset, f.raw(), p.numel() * sizeof(float));
    }
    wf.tensors.erase(p.name);
  }
  // A tied model's file may still carry lm_head.weight (some exporters write it); anything
  // else left over means the file is not this model.
  wf.tensors.erase("lm_head.weight");
  for (auto& [name, t] : wf.tensors) {
    if (name.find("rotary_emb.inv_freq") != std::string::npos ||
        name.find(".attn.bias") != std::string::npos ||
        name.find(".attn.masked_bias") != std::string::npos)
      continue;  // buffers older HF versions saved
    fail("model", "unexpected tensor '", name, "' in ", wf.origin[name],
         ": the weights do not match config.json");
  }
}

}  // namespace

void load_weights(Model& model, const std::string& dir) {
  if (file_exists(dir + "/manifest.json")) {  // a sharded training checkpoint
    verify_checksums(dir);
    load_sharded_buffers(dir, model, {{"weights", "weight_runs", model.weights().f32()}});
    return;
  }
  WeightFiles wf = open_weight_files(dir);
  copy_weights(model, wf);
}

std::unique_ptr<Model> load_model(const std::string& dir) {
  KILN_CHECK(file_exists(dir + "/config.json"), "model", "no config.json in '", dir,
             "': pass a checkpoint directory (config.json + model.safetensors)");
  verify_checksums(dir, {"config.json"});
  const ModelConfig cfg = load_model_config(dir + "/config.json");
  if (file_exists(dir + "/manifest.json")) {  // a sharded training checkpoint
    auto model = std::make_unique<Model>(cfg);
    load_weights(*model, dir);
    return model;
  }
  WeightFiles wf = open_weight_files(dir);
  check_weight_shapes(param_layout(cfg), wf);  // before allocating the model
  auto model = std::make_unique<Model>(cfg);
  copy_weights(*model, wf);
  return model;
}

void save_model(const Model& model, const std::string& dir, DType dtype) {
  KILN_CHECK(dtype == DType::f32 || dtype == DType::bf16, "model", "cannot save weights as ",
             dtype_name(dtype), ": use F32 or BF16");
  make_dirs(dir);
  nlohmann::json cfg = model.config().to_json();
  cfg["torch_dtype"] = dtype == DType::bf16 ? "bfloat16" : "float32";
  write_json_file_atomic(dir + "/config.json", cfg);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const ParamInfo& p : model.params()) {
    Tensor t = model.param_view(p, model.weights());
    if (dtype == DType::bf16) {
      Tensor b = Tensor::empty(p.shape, DType::bf16);
      ops::cpu::f32_to_bf16(b.data<uint16_t>(), t.f32(), p.numel());
      t = b;
    }
    tensors.emplace_back(p.name, t);
  }
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

void save_model_bnb4bit(const Model& model, const std::string& dir) {
  make_dirs(dir);
  nlohmann::json cfg = model.config().to_json();
  cfg["torch_dtype"] = "float32";
  cfg["quantization_config"] = bnb4bit_quantization_config();
  write_json_file_atomic(dir + "/config.json", cfg);
  // fp32 tensors first, then the bytes, so every tensor is aligned (as Python orders them).
  std::vector<std::pair<std::string, Tensor>> wide, bytes;
  for (const ParamInfo& p : model.params()) {
    const float* w = model.weights().f32() + p.offset;
    if (!bnb4bit_quantizes(p.name, p.shape)) {
      wide.emplace_back(p.name, model.param_view(p, model.weights()));
      continue;
    }
    for (auto& [name, t] : bnb4bit_tensors(p.name, w, p.shape))
      (t.dtype() == DType::u8 ? bytes : wide).emplace_back(name, std::move(t));
  }
  for (auto& t : bytes) wide.push_back(std::move(t));
  save_safetensors(dir + "/model.safetensors", wide, {{"format", "pt"}});
}

std::vector<std::string> checkpoint_dirs(const std::string& run_dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> out;
  fs::path dir = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    // Complete checkpoints only: temporary directories end in ".tmp".
    if (name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos &&
        fs::exists(e.path() / "trainer_state.json"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());  // zero-padded step numbers sort by step
  return out;
}

std::string latest_checkpoint(const std::string& run_dir) {
  auto all = checkpoint_dirs(run_dir);
  return all.empty() ? "" : all.back();
}

std::string resolve_model_dir(const std::string& path) {
  if (file_exists(path + "/config.json")) return path;
  std::string latest = latest_checkpoint(path);
  KILN_CHECK(!latest.empty(), "model", "'", path,
             "' is neither a model directory (config.json) nor a run directory with checkpoints");
  return latest;
}

}  // namespace kiln

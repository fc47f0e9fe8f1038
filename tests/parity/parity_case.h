// The PyTorch parity setup shared by the CPU and GPU parity tests: a model from a config in
// configs/models (weights seeded 7), a random (B, T+1) batch, and the oracle that
// tests/parity/torch_reference.py computes from the same checkpoint and batch (loss, every
// gradient, the losses of `steps` AdamW steps with weight decay 0.1 and clipping 1.0 at lr 1e-3,
// and the final weights).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/rng.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "test_util.h"

namespace kiln::test {

struct ParityCase {
  std::unique_ptr<Model> model;
  SafeTensorsFile ref;
  std::vector<int32_t> ids, targets;  // (B, T) each
};

// Writes the model, the batch and the oracle into `dir`. Fails the test (ASSERT) when the
// reference script fails; check HasFatalFailure() after the call. `extra`, when given, is called
// with the model before the script runs and returns more arguments for it (--adapter DIR).
inline void make_parity_case(const TempDir& dir, const std::string& config_name, int B, int T,
                             int steps, ParityCase& c,
                             const std::function<std::string(const Model&)>& extra = {}) {
  // A name in configs/models, or a path to a config.json.
  const std::string config_path =
      config_name.starts_with("/") ? config_name : source_dir() + "/configs/models/" + config_name;
  ModelConfig cfg = load_model_config(config_path);
  c.model = std::make_unique<Model>(cfg);
  c.model->init_weights(7);
  save_model(*c.model, dir / "model");
  Tensor batch = Tensor::empty({B, T + 1}, DType::i32);
  Rng rng(11);
  for (int64_t i = 0; i < batch.numel(); ++i)
    batch.data<int32_t>()[i] = int32_t(rng.below(cfg.vocab_size));
  save_safetensors(dir / "batch.safetensors", {{"input_ids", batch}});
  // KILN_PYTHON names a python3 with PyTorch where Debian's is not the one (a GPU machine's image).
  const char* py = std::getenv("KILN_PYTHON");
  auto r =
      run_command(std::string(py ? py : "/usr/bin/python3") + " " + source_dir() +
                  "/tests/parity/torch_reference.py --model " + (dir / "model") + " --batch " +
                  (dir / "batch.safetensors") + " --out " + (dir / "ref.safetensors") +
                  " --steps " + std::to_string(steps) +
                  " --lr 1e-3 --beta1 0.9 --beta2 0.95 --eps 1e-8 --weight-decay 0.1 --clip 1.0 " +
                  (extra ? extra(*c.model) : std::string()));
  ASSERT_EQ(r.status, 0) << r.output;
  c.ref = load_safetensors(dir / "ref.safetensors");
  c.ids.resize(size_t(B) * T);
  c.targets.resize(size_t(B) * T);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      c.ids[b * T + t] = batch.data<int32_t>()[b * (T + 1) + t];
      c.targets[b * T + t] = batch.data<int32_t>()[b * (T + 1) + t + 1];
    }
}

// max |a - b| / max |b| over n elements.
inline double normalized_error(const float* a, const float* b, int64_t n) {
  double diff = 0, scale = 1e-30;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    scale = std::max(scale, double(std::fabs(b[i])));
  }
  return diff / scale;
}

// How far the final weights are from the oracle's, as a fraction of the allowed distance: 1% of
// the largest total movement (lr * steps) plus 1e-5 relative. <= 1 passes.
// `weights`: the flat buffer p is laid out in (a model's, or a LoRA adapter's).
inline double worst_final_weight(const float* weights, const SafeTensorsFile& ref,
                                 const ParamInfo& p, float lr, int steps) {
  const float* want = ref.get("final." + p.name).f32();
  const float* got = weights + p.offset;
  double worst = 0;
  for (int64_t i = 0; i < p.numel(); ++i) {
    double tol = 1e-2 * lr * steps + 1e-5 * std::fabs(want[i]);
    worst = std::max(worst, std::fabs(double(got[i]) - want[i]) / tol);
  }
  return worst;
}
inline double worst_final_weight(const Model& model, const SafeTensorsFile& ref, const ParamInfo& p,
                                 float lr, int steps) {
  return worst_final_weight(model.weights().f32(), ref, p, lr, steps);
}

}  // namespace kiln::test

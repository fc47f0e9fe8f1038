#include "kiln/model/pipeline_stage.h"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_map>

#include "kiln/core/error.h"
#include "kiln/model/transformer.h"

namespace kiln {

PipelineStage full_model_stage(const ModelConfig& cfg) {
  return {0, cfg.layers, true, true};
}

PipelineStage expert_part(const ModelConfig& cfg, PipelineStage stage, int parts, int part) {
  const int E = cfg.moe.experts;
  KILN_CHECK(E > 0, "expert parallelism", "parallel.ep = ", parts,
             " splits the experts of a Mixture-of-Experts model, but this model is dense; use "
             "parallel.ep = 1");
  KILN_CHECK(parts >= 1 && E % parts == 0, "expert parallelism", "parallel.ep = ", parts,
             " does not divide num_local_experts = ", E, "; choose ep among the divisors of ", E);
  KILN_CHECK(part >= 0 && part < parts, "expert parallelism", "part ", part,
             " is out of range for ", parts, " parts");
  stage.first_expert = part * (E / parts);
  stage.num_experts = E / parts;
  return stage;
}

PipelineStage pipeline_stage(const ModelConfig& cfg, int stages, int stage) {
  const int L = cfg.layers;
  KILN_CHECK(stages >= 1 && stage >= 0 && stage < stages, "pipeline", "stage ", stage,
             " is out of range for ", stages, " stages");
  KILN_CHECK(stages <= L, "pipeline", "parallel.pp = ", stages,
             " pipeline stages but the model has ", L,
             " layers: every stage needs at least one layer; use parallel.pp <= ", L);
  const int base = L / stages, extra = L % stages;
  PipelineStage s;
  s.first_layer = stage * base + std::min(stage, extra);
  s.num_layers = base + (stage < extra ? 1 : 0);
  s.has_embedding = stage == 0;
  s.has_head = stage == stages - 1;
  return s;
}

void copy_shared_params(const Model& from, const float* src, const Model& to, float* dst) {
  std::unordered_map<std::string_view, const ParamInfo*> by_name;
  for (const ParamInfo& p : to.params()) by_name.emplace(p.name, &p);
  for (const ParamInfo& p : from.params()) {
    auto it = by_name.find(p.name);
    if (it == by_name.end()) continue;
    KILN_CHECK(it->second->shape == p.shape, "pipeline", "parameter '", p.name, "' has shape ",
               shape_str(p.shape), " in one model and ", shape_str(it->second->shape),
               " in the other: the two models have different configs");
    std::memcpy(dst + it->second->offset, src + p.offset, size_t(p.numel()) * sizeof(float));
  }
}

}  // namespace kiln

#include "kiln/train/sharded_checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>

#include "kiln/core/error.h"
#include "kiln/io/checksums.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"
#include "kiln/io/safetensors.h"
#include "kiln/model/model_io.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

std::string shard_name(int rank) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "shard_%05d.safetensors", rank);
  return buf;
}

// Concatenates runs' data into one tensor, their (full, n) into JSON.
std::pair<Tensor, std::string> pack(const std::vector<StatePieces::Run>& runs) {
  int64_t total = 0;
  for (const auto& r : runs) total += r.n;
  Tensor t = Tensor::empty({total});
  nlohmann::json index = nlohmann::json::array();
  int64_t at = 0;
  for (const auto& r : runs) {
    std::memcpy(t.f32() + at, r.data, size_t(r.n) * sizeof(float));
    index.push_back({r.full, r.n});
    at += r.n;
  }
  return {t, index.dump()};
}

void fsync_path(const std::string& path) {
  if (FILE* f = std::fopen(path.c_str(), "r")) {
    fsync(fileno(f));
    std::fclose(f);
  }
}

}  // namespace

StatePieces to_whole_layout(const StatePieces& local, const Model& part,
                            const TensorParallelMap* tpm) {
  // Offsets of each name in the layout `part` is cut from: the whole model, or the whole shard.
  std::map<std::string, int64_t> whole_offset;
  for (const ParamInfo& p : param_layout(part.config())) whole_offset[p.name] = p.offset;
  const bool tied_copy = part.config().tie_embeddings && !part.stage().has_embedding;
  auto convert = [&](const std::vector<StatePieces::Run>& runs) {
    std::vector<StatePieces::Run> out;
    for (const auto& r : runs) {
      for (const ParamInfo& p : part.params()) {
        const int64_t x = std::max(r.full, p.offset),
                      y = std::min(r.full + r.n, p.offset + p.numel());
        if (x >= y) continue;
        if (tied_copy && is_token_embedding(p.name)) continue;
        if (tpm && tpm->rank() != 0 && tpm->replicated(p.name)) continue;  // tp rank 0's copy
        const float* data = r.data + (x - r.full);
        const int64_t lo = whole_offset.at(p.name) + (x - p.offset), hi = lo + (y - x);
        if (!tpm) {
          out.push_back({lo, data, hi - lo});
          continue;
        }
        // The shard's runs inside [lo, hi) of its whole layout, placed in the full model's.
        tpm->for_each_run([&](int64_t full, int64_t at, int64_t n) {
          const int64_t a = std::max(lo, at), b = std::min(hi, at + n);
          if (a < b) out.push_back({full + (a - at), data + (a - lo), b - a});
        });
      }
    }
    return out;
  };
  return {convert(local.weights), convert(local.m), convert(local.v)};
}

StatePieces model_pieces(const Model& part, const AdamW& opt, const TensorParallelMap* tpm) {
  const int64_t P = part.num_params();
  auto& o = const_cast<AdamW&>(opt);
  return to_whole_layout(
      {{{0, part.weights().f32(), P}}, {{0, o.m().f32(), P}}, {{0, o.v().f32(), P}}}, part, tpm);
}

std::string save_sharded_checkpoint(const std::string& run_dir, const StatePieces& mine,
                                    dist::Comm& world, const ModelConfig& whole,
                                    const Tokenizer& tok, int64_t optimizer_steps,
                                    const TrainerState& state, const nlohmann::json& layout,
                                    int keep) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", (long long)state.step);
  const std::string parent = run_dir + "/checkpoints";
  const std::string final_dir = parent + "/" + name, tmp = final_dir + ".tmp";
  const bool root = world.rank() == 0;
  if (root) {
    fs::remove_all(tmp);
    make_dirs(tmp);
  }
  world.barrier();
  const bool has = !mine.weights.empty() || !mine.m.empty();
  if (has) {
    auto [w, wi] = pack(mine.weights);
    auto [m, mi] = pack(mine.m);
    auto [v, vi] = pack(mine.v);
    save_safetensors(tmp + "/" + shard_name(world.rank()),
                     {{"weights", w}, {"exp_avg", m}, {"exp_avg_sq", v}},
                     {{"weight_runs", wi}, {"moment_runs", mi}});
  }
  // Rank 0 lists the ranks that wrote a shard.
  float flag = has ? 1.0f : 0.0f;
  std::vector<float> flags(size_t(world.size()));
  world.all_gather(&flag, flags.data(), 1);
  world.barrier();  // every shard is written
  if (root) {
    nlohmann::json files = nlohmann::json::array();
    for (int r = 0; r < world.size(); ++r)
      if (flags[size_t(r)] > 0) files.push_back(shard_name(r));
    int64_t params = 0;
    for (const ParamInfo& p : param_layout(whole)) params += p.numel();
    write_json_file_atomic(tmp + "/manifest.json", {{"format", "kiln-sharded-1"},
                                                    {"layout", layout},
                                                    {"world", world.size()},
                                                    {"params", params},
                                                    {"files", files}});
    write_json_file_atomic(tmp + "/config.json", whole.to_json());
    tok.save(tmp + "/tokenizer.json");
    write_trainer_state(tmp, optimizer_steps, state);
    write_checksums(tmp);  // every rank's shard is on disk (barrier above)
    fsync_path(tmp);
    fs::remove_all(final_dir);  // re-saving a step after a resume
    fs::rename(tmp, final_dir);
    fsync_path(parent);
    prune_checkpoints(run_dir, keep);
  }
  world.barrier();  // complete before any rank reads or removes it
  return final_dir;
}

}  // namespace kiln

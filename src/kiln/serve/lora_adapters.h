// The LoRA adapters a server holds beside its base model, by the name requests give as their
// `model` (as vLLM's --lora-modules and /v1/load_lora_adapter do). Each is loaded against the base
// (model/lora.h checks its rank, shapes and target modules) into the form the engine adds to the
// base's GEMMs, with its own prefix-cache salt. Any thread may load, unload, find and list; a
// request keeps the adapter it found alive while it runs, so unloading never pulls weights from
// under a batch.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kiln/infer/engine.h"

namespace kiln::serve {

class LoraAdapters {
 public:
  // Throws Error naming the problem: a name in use, an unreadable adapter or one that does not
  // fit the base.
  void load(const std::string& name, const std::string& dir, const Model& base);
  bool unload(const std::string& name);  // false: no such adapter
  std::optional<EngineAdapter> find(const std::string& name) const;
  struct Entry {
    std::string name, dir;
  };
  std::vector<Entry> list() const;  // by name

 private:
  struct Held {
    std::string dir;
    EngineAdapter adapter;
  };
  mutable std::mutex mu_;
  std::map<std::string, Held> by_name_;
  uint64_t next_salt_ = 1;  // 0 is the base's
};

}  // namespace kiln::serve

#include "kiln/serve/lora_adapters.h"

#include "kiln/core/error.h"
#include "kiln/model/lora.h"

namespace kiln::serve {

void LoraAdapters::load(const std::string& name, const std::string& dir, const Model& base) {
  KILN_CHECK(!name.empty(), "lora", "the adapter needs a name");
  {
    std::lock_guard<std::mutex> lock(mu_);
    KILN_CHECK(!by_name_.count(name), "lora", "an adapter named '", name,
               "' is loaded already; unload it first or choose another name");
  }
  // Read and checked outside the lock: other requests go on meanwhile.
  const LoraAdapter ad = load_lora_adapter(dir, base);
  auto w = std::make_shared<LoraWeights>(base, ad.config);
  w->assign(ad, dir);
  std::lock_guard<std::mutex> lock(mu_);
  KILN_CHECK(!by_name_.count(name), "lora", "an adapter named '", name, "' is loaded already");
  by_name_[name] = {dir, {std::move(w), next_salt_++}};
}

bool LoraAdapters::unload(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  return by_name_.erase(name) > 0;
}

std::optional<EngineAdapter> LoraAdapters::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second.adapter;
}

std::vector<LoraAdapters::Entry> LoraAdapters::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Entry> out;
  for (const auto& [name, h] : by_name_) out.push_back({name, h.dir});
  return out;
}

}  // namespace kiln::serve

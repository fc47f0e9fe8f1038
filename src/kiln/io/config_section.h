// One way to read a YAML config file's mapping (a training config's sections, a curation
// recipe's steps): each key is named once, by the call that reads it, and finish() rejects every
// key that no call named, listing the known ones.
//   ConfigSection optim(root["optim"], "config", path, "optim");
//   optim.get("lr", c.optim.lr);
//   optim.get("beta1", c.optim.beta1);
//   optim.finish();   // "[config] run.yaml: unknown key 'optim.lrr' (line 7); known keys in optim:
//   ..."
#pragma once

#include <yaml-cpp/yaml.h>

#include <set>
#include <string>
#include <utility>

#include "kiln/core/error.h"

namespace kiln {

class ConfigSection {
 public:
  // `node` may be absent or null (every key then keeps its default) or a mapping. `op` and
  // `where` start every message; `section` (empty for the top level) prefixes the key names.
  ConfigSection(YAML::Node node, std::string op, std::string where, std::string section = "");

  // Reads `key` into `value` when present; a value of the wrong type is an error naming the key,
  // the value and the line.
  template <typename T>
  void get(const char* key, T& value) {
    known_.insert(key);
    if (!has(key)) return;
    try {
      value = std::as_const(node_)[key].template as<T>();
    } catch (const YAML::Exception&) {
      bad_value(key);
    }
  }
  // Marks `key` known and returns its node (undefined when absent) for the caller to read.
  YAML::Node take(const char* key);
  bool has(const char* key) const { return node_.IsMap() && node_[key]; }
  // "[op] where: 'section.key' ..." for a check the caller makes on a value it read.
  [[noreturn]] void bad_value(const char* key, const std::string& why = "") const;
  void finish() const;

 private:
  std::string name(const std::string& key) const {
    return section_.empty() ? key : section_ + "." + key;
  }

  YAML::Node node_;
  std::string op_, where_, section_;
  std::set<std::string> known_;
};

}  // namespace kiln

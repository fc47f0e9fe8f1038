#include "kiln/io/config_section.h"

namespace kiln {

ConfigSection::ConfigSection(YAML::Node node, std::string op, std::string where,
                             std::string section)
    : node_(std::move(node)),
      op_(std::move(op)),
      where_(std::move(where)),
      section_(std::move(section)) {
  KILN_CHECK(!node_ || node_.IsNull() || node_.IsMap(), op_.c_str(), where_, ": '",
             section_.empty() ? "the top level" : section_, "' must be a mapping of settings");
}

YAML::Node ConfigSection::take(const char* key) {
  known_.insert(key);
  return has(key) ? std::as_const(node_)[key] : YAML::Node(YAML::NodeType::Undefined);
}

void ConfigSection::bad_value(const char* key, const std::string& why) const {
  const YAML::Node v = has(key) ? std::as_const(node_)[key] : YAML::Node(YAML::NodeType::Undefined);
  std::string shown = v ? YAML::Dump(v) : "";
  if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
  fail(op_.c_str(), where_, ": '", name(key), "' has an invalid value '", shown, "'",
       v && !v.Mark().is_null() ? str(" (line ", v.Mark().line + 1, ")") : "",
       why.empty() ? "" : ": ", why);
}

void ConfigSection::finish() const {
  if (!node_.IsMap()) return;
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string k = it->first.as<std::string>();
    if (known_.count(k)) continue;
    std::string list;
    for (const auto& name : known_) list += (list.empty() ? "" : ", ") + name;
    const YAML::Mark at = it->first.Mark();
    fail(op_.c_str(), where_, ": unknown key '", name(k), "'",
         at.is_null() ? "" : str(" (line ", at.line + 1, ")"), "; known keys",
         section_.empty() ? "" : " in " + section_, ": ", list.empty() ? "none" : list);
  }
}

}  // namespace kiln

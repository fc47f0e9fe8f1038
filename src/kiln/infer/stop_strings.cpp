#include "kiln/infer/stop_strings.h"

#include <algorithm>

#include "kiln/core/error.h"

namespace kiln {

StopStrings::StopStrings(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (const auto& s : stops_)
    KILN_CHECK(!s.empty(), "stop", "a stop string is empty: it would stop before any text");
}

std::string StopStrings::push(const std::string& piece) {
  if (hit_) return {};
  held_ += piece;
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    hit_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t j = std::min(s.size() - 1, held_.size()); j > keep; --j) {
      if (held_.compare(held_.size() - j, j, s, 0, j) == 0) {
        keep = j;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopStrings::flush() {
  std::string out;
  out.swap(held_);
  return hit_ ? std::string() : out;
}

}  // namespace kiln

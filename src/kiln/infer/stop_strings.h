// Stop strings over streamed text: pieces go in, text that can no longer be the start of a stop
// string comes out, and the first stop string found cuts the text exactly before it, even when
// it spans token boundaries. Cost: O(piece + longest stop) per push.
#pragma once

#include <string>
#include <vector>

namespace kiln {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops = {});
  // Appends `piece`; returns the text now safe to emit. After a hit, returns only the text
  // before the stop string and hit() is true; further pushes return "".
  std::string push(const std::string& piece);
  // At the end of generation: the held-back text (never part of a completed stop string).
  std::string flush();
  bool hit() const { return hit_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool hit_ = false;
};

}  // namespace kiln

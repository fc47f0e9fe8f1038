// Stop strings over streamed text: pieces go in, text that can no longer be the start of a stop
// string comes out, and the first stop string found cuts the text exactly before it, even when
// it spans token boundaries. Cost: O(piece + longest stop) per push.
#pragma once

#include <string>
#include <vector>

#include "kiln/tokenizer/tokenizer.h"

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

// A generated sample's text: ids in, complete UTF-8 out (IncrementalDecoder), held back while it
// may begin a stop string and cut exactly before the first one (StopStrings). The engine uses it
// when it detokenizes; `kiln serve` uses it in its detokenize stage, after the engine.
class TextStream {
 public:
  TextStream(const Tokenizer& tok, std::vector<std::string> stops)
      : detok_(tok), stops_(std::move(stops)) {}
  std::string push(int32_t id) { return stops_.push(detok_.push(id)); }
  // At the end of the sample: the text still held ("" after a stop string).
  std::string finish() {
    if (stops_.hit()) return {};
    std::string rest = stops_.push(detok_.flush());
    return rest + stops_.flush();
  }
  bool hit() const { return stops_.hit(); }

 private:
  IncrementalDecoder detok_;
  StopStrings stops_;
};

}  // namespace kiln

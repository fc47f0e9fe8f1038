#include "kiln/core/error.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

Tokenizer::Impl load_sentencepiece(const std::string& path, const std::string& content) {
  fail("tokenizer", path, ": SentencePiece .model files are not supported yet");
}

}  // namespace kiln

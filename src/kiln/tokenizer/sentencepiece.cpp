#include "kiln/tokenizer/sentencepiece.h"

#include "kiln/core/error.h"

namespace kiln::tok {

SentencePiece::SentencePiece(std::vector<Piece> pieces, bool add_dummy_prefix, bool byte_fallback)
    : pieces_(std::move(pieces)),
      add_dummy_prefix_(add_dummy_prefix),
      byte_fallback_(byte_fallback) {}

void SentencePiece::encode(std::string_view text, std::vector<int32_t>& out) const {
  fail("sentencepiece", "encode is not implemented yet");
}

std::string SentencePiece::piece_bytes(int32_t id) const {
  return pieces_[size_t(id)].text;
}

}  // namespace kiln::tok

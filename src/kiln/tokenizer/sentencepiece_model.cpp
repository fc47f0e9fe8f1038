// SentencePiece .model files: a ModelProto (sentencepiece_model.proto) read by hand, no protoc.
// Only the fields a BPE model needs are read: pieces (piece, score, type), trainer_spec
// (model_type, byte_fallback) and normalizer_spec (name, add_dummy_prefix,
// remove_extra_whitespaces); the rest is skipped.
#include <cstring>

#include "kiln/core/error.h"
#include "kiln/core/limits.h"
#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

namespace {

// A protobuf reader over one message; errors name the file and the byte offset.
struct Reader {
  const std::string& path;
  std::string_view buf;
  size_t base;  // offset of buf in the file
  size_t pos = 0;

  bool done() const { return pos >= buf.size(); }
  [[noreturn]] void bad(const std::string& what) const {
    fail("tokenizer", path, ": byte ", base + pos, ": ", what,
         ": the file is not a valid SentencePiece model (truncated or another format)");
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= buf.size()) bad("varint runs past the end");
      auto b = uint8_t(buf[pos++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint longer than 10 bytes");
  }
  // Reads a field key; returns {field, wire type}.
  std::pair<uint32_t, uint32_t> key() {
    uint64_t k = varint();
    return {uint32_t(k >> 3), uint32_t(k & 7)};
  }
  Reader sub() {
    uint64_t n = varint();
    if (n > buf.size() - pos) bad(str("a field of ", n, " bytes runs past the end"));
    Reader r{path, buf.substr(pos, n), base + pos};
    pos += n;
    return r;
  }
  std::string_view bytes() {
    Reader r = sub();
    return r.buf;
  }
  float f32() {
    if (buf.size() - pos < 4) bad("float runs past the end");
    float f;
    std::memcpy(&f, buf.data() + pos, 4);
    pos += 4;
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0:
        varint();
        break;
      case 1:
        if (buf.size() - pos < 8) bad("fixed64 runs past the end");
        pos += 8;
        break;
      case 2:
        sub();
        break;
      case 5:
        if (buf.size() - pos < 4) bad("fixed32 runs past the end");
        pos += 4;
        break;
      default:
        bad(str("unknown wire type ", wire));
    }
  }
};

}  // namespace

Tokenizer::Impl load_sentencepiece(const std::string& path, const std::string& content) {
  Reader r{path, content, 0};
  std::vector<tok::SentencePiece::Piece> pieces;
  int model_type = 1;  // UNIGRAM, the proto's default
  bool byte_fallback = false, add_dummy_prefix = true, remove_extra_ws = true;
  std::string normalizer = "nmt_nfkc";
  while (!r.done()) {
    auto [field, wire] = r.key();
    if (field == 1 && wire == 2) {
      Reader p = r.sub();
      tok::SentencePiece::Piece piece;
      while (!p.done()) {
        auto [f, w] = p.key();
        if (f == 1 && w == 2)
          piece.text = std::string(p.bytes());
        else if (f == 2 && w == 5)
          piece.score = p.f32();
        else if (f == 3 && w == 0)
          piece.type = tok::SentencePiece::Type(p.varint());
        else
          p.skip(w);
      }
      pieces.push_back(std::move(piece));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      Reader t = r.sub();
      while (!t.done()) {
        auto [f, w] = t.key();
        if (f == 3 && w == 0)
          model_type = int(t.varint());
        else if (f == 35 && w == 0)
          byte_fallback = t.varint() != 0;
        else
          t.skip(w);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      Reader n = r.sub();
      while (!n.done()) {
        auto [f, w] = n.key();
        if (f == 1 && w == 2)
          normalizer = std::string(n.bytes());
        else if (f == 3 && w == 0)
          add_dummy_prefix = n.varint() != 0;
        else if (f == 4 && w == 0)
          remove_extra_ws = n.varint() != 0;
        else
          n.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  KILN_CHECK(!pieces.empty(), "tokenizer", path,
             ": no pieces: not a SentencePiece model (nor tokenizer.json or a .tiktoken file)");
  limits::check_limit("tokenizer", path, "the number of pieces", int64_t(pieces.size()),
                      limits::kMaxVocab);
  KILN_CHECK(model_type == 2, "tokenizer", path, ": trainer_spec.model_type is ", model_type,
             " (1 = Unigram, 3 = word, 4 = char): only BPE (2) SentencePiece models are supported");
  KILN_CHECK(normalizer == "identity", "tokenizer", path, ": normalizer_spec.name is '", normalizer,
             "': only the identity normalizer (Llama's) is supported");
  Tokenizer::Impl impl;
  impl.sp.emplace(std::move(pieces), add_dummy_prefix, remove_extra_ws, byte_fallback);
  return impl;
}

}  // namespace kiln

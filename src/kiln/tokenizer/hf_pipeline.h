// The pipeline around a tokenizer.json's model, as Hugging Face `tokenizers` defines it:
// normalizer -> pre_tokenizer -> (model) -> post_processor -> decoder, read into a
// Tokenizer::Impl. Internal to hf_json.cpp. A component kiln does not run is an error naming its
// JSON path in the file (`pre_tokenizer.pretokenizers[1].type = "BertPreTokenizer"`), never a
// tokenizer that silently encodes differently.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "kiln/tokenizer/tokenizer_impl.h"

namespace kiln {

// Reads j's normalizer, pre_tokenizer, post_processor and decoder into impl (its model and added
// tokens must be read already: the post-processor names ids, the decoder maps pieces). For a
// byte-level model the decoder must be ByteLevel; for a character-level one (byte fallback) it
// gives impl.decoded and impl.decode_strip. `path` is only for messages.
void read_hf_pipeline(const std::string& path, const nlohmann::json& j, bool byte_level,
                      Tokenizer::Impl& impl);

// One line per component: "Sequence[Split(Regex '...', Isolated), ByteLevel(...)]".
std::string describe_component(const nlohmann::json& c);

}  // namespace kiln

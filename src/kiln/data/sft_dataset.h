// Supervised fine-tuning data: JSONL chat records turned into token ids and a loss mask, and the
// batches the trainer reads from them. One record per line, in one of three shapes (TRL's):
//   {"text": "### Human: How do you say hi? ### Assistant: Hello."}     the guanaco format
//   {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
//   {"prompt": "...", "completion": "..."}
// `messages` are rendered with the model's chat template (or a configured one). The loss counts
// the assistant's / completion's tokens only (TRL's assistant_only_loss / completion_only_loss;
// switchable), each assistant turn including the end-of-turn text the template writes after it.
// Every example ends with the tokenizer's eos token (counted in the loss). A prompt part and an
// assistant part are tokenized separately, so the prompt's tokens are exactly those the model
// sees at inference (where the prompt is tokenized alone and the reply follows). Examples longer
// than max_seq_length tokens are cut to it and counted. Errors name the file and line.
//
// Batches: each example is one row, padded: targets -1 (ignored by the loss) where the loss does
// not count, so padding costs nothing in the loss. With packing, training rows are filled with
// whole examples in order (an example of n tokens takes n - 1 slots: its last token is never an
// input that counts), the rest of a row padding; positions restart per example, so packed
// training computes what unpacked training does, in fewer rows. Examples are drawn in a
// seeded shuffle per epoch; validation is a fixed slice of the shuffled examples or its own file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "kiln/data/batch_source.h"
#include "kiln/tokenizer/chat_template.h"
#include "kiln/tokenizer/tokenizer.h"

namespace kiln {

struct SftOptions {
  int max_seq_length = 0;           // tokens per example, eos included, longer ones cut; 0: no cut
                                    // (open_sft_source makes it one row: train.seq_len + 1)
  bool assistant_only_loss = true;  // false: every token after the first counts
};

struct SftExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;  // per token: 1 when predicting it counts in the loss
  bool truncated = false;
};

struct SftStats {
  int64_t examples = 0, truncated = 0, tokens = 0, loss_tokens = 0;
};

// One record (one of the three shapes) as an example. `where` ("file:line") starts error messages.
SftExample format_sft_record(const nlohmann::json& record, const Tokenizer& tok,
                             const ChatTemplate& chat, const SftOptions& opts,
                             const std::string& where);

// Every record of the JSONL files, in order. Blank lines are skipped; anything else that is not a
// valid record is an error naming the file and line (invalid JSON, an unknown shape, a message
// with an unknown role or a non-string content, no assistant turn, an empty completion).
// A record's last assistant reply and everything before it as the model sees it at inference (the
// chat rendered up to the generation prompt; the text up to its last "### Assistant:"; the
// prompt), for scoring replies (kiln eval --sft). Errors as format_sft_record's.
struct SftTurn {
  std::string prompt, reply;
};
SftTurn sft_last_turn(const nlohmann::json& record, const ChatTemplate& chat,
                      const std::string& where);
// sft_last_turn of every record of a JSONL file (at most `limit` when > 0), with file:line errors.
std::vector<SftTurn> load_sft_turns(const std::string& path, const ChatTemplate& chat,
                                    int64_t limit = 0);

std::vector<SftExample> load_sft_jsonl(const std::vector<std::string>& paths, const Tokenizer& tok,
                                       const ChatTemplate& chat, const SftOptions& opts,
                                       SftStats* stats = nullptr);

struct SftSpec {
  std::vector<std::string> train;  // JSONL files
  std::string val;                 // optional JSONL file; else val_fraction of train's examples
  double val_fraction = 0.05;
  SftOptions options;
  // Several examples per training row (TRL's packing), each at positions from 0 with attention
  // confined to it (BatchSource::positions), instead of one padded example per row.
  bool packing = false;
};

// The trainer's batches from SFT data: rows of T inputs and T targets (ids shifted by one, -1
// where the loss does not count). T must be >= max_seq_length - 1 so no example is split.
std::unique_ptr<BatchSource> open_sft_source(SftSpec spec, const Tokenizer& tok,
                                             const ChatTemplate& chat, int T, uint64_t seed);

}  // namespace kiln

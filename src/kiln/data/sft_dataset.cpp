#include "kiln/data/sft_dataset.h"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/rng.h"
#include "kiln/data/jsonl.h"

namespace kiln {

namespace {

constexpr const char* kHuman = "### Human:";
constexpr const char* kAssistant = "### Assistant:";

// Builds an example from text pieces, each tokenized on its own and counted in the loss or not.
class Pieces {
 public:
  Pieces(const Tokenizer& tok, const SftOptions& opts) : tok_(tok), opts_(opts) {}
  void add(std::string_view text, bool counts) {
    if (text.empty()) return;
    const std::vector<int32_t> ids = tok_.encode(text, /*allow_special=*/true);
    ex_.ids.insert(ex_.ids.end(), ids.begin(), ids.end());
    ex_.loss.insert(ex_.loss.end(), ids.size(), uint8_t(counts || !opts_.assistant_only_loss));
  }
  // Ends with eos (counted: the model learns to stop), cuts to max_seq_length, and never counts
  // the first token (nothing predicts it).
  SftExample finish() {
    const std::optional<int32_t> eos = tok_.eos_id();
    if (eos && (ex_.ids.empty() || ex_.ids.back() != *eos)) {
      ex_.ids.push_back(*eos);
      ex_.loss.push_back(1);
    }
    if (opts_.max_seq_length > 0 && int64_t(ex_.ids.size()) > opts_.max_seq_length) {
      ex_.ids.resize(size_t(opts_.max_seq_length));
      ex_.loss.resize(size_t(opts_.max_seq_length));
      ex_.truncated = true;
    }
    if (!ex_.loss.empty()) ex_.loss[0] = 0;
    return std::move(ex_);
  }

 private:
  const Tokenizer& tok_;
  const SftOptions& opts_;
  SftExample ex_;
};

const std::string& string_field(const nlohmann::json& j, const char* key,
                                const std::string& where) {
  KILN_CHECK(j.contains(key) && j[key].is_string(), "sft", where, ": '", key, "' must be a string");
  return j[key].get_ref<const std::string&>();
}

// "### Human: q ### Assistant: a ### Human: ..." : what follows each "### Assistant:" up to the
// next "### Human:" is the assistant's.
SftExample format_text(const std::string& text, Pieces& p, const std::string& where) {
  size_t at = text.find(kAssistant);
  KILN_CHECK(at != std::string::npos, "sft", where, ": 'text' has no '", kAssistant,
             "' turn; write records as '### Human: ... ### Assistant: ...'");
  size_t from = 0;
  while (at != std::string::npos) {
    const size_t reply = at + std::char_traits<char>::length(kAssistant);
    p.add(std::string_view(text).substr(from, reply - from), false);
    const size_t next = text.find(kHuman, reply);
    const size_t end = next == std::string::npos ? text.size() : next;
    p.add(std::string_view(text).substr(reply, end - reply), true);
    from = end;
    at = next == std::string::npos ? next : text.find(kAssistant, next);
  }
  p.add(std::string_view(text).substr(from), false);
  return p.finish();
}

// Rendered turn by turn: the text up to an assistant turn (with the generation prompt) is
// prompt, what the turn adds after it is the assistant's.
// The checked messages of a record: known roles, string contents, at least one assistant's.
std::vector<ChatMessage> parse_messages(const nlohmann::json& msgs, const std::string& where) {
  KILN_CHECK(msgs.is_array() && !msgs.empty(), "sft", where,
             ": 'messages' must be a non-empty list of {role, content}");
  std::vector<ChatMessage> turns;
  bool any_assistant = false;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string at = str(where, ": messages[", i, "]");
    KILN_CHECK(msgs[i].is_object(), "sft", at, " must be an object {role, content}");
    ChatMessage m{string_field(msgs[i], "role", at), string_field(msgs[i], "content", at)};
    KILN_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", "sft", at,
               ": unknown role '", m.role, "'; use system, user or assistant");
    any_assistant |= m.role == "assistant";
    turns.push_back(std::move(m));
  }
  KILN_CHECK(any_assistant, "sft", where,
             ": no assistant message, so nothing to learn; add the reply as role 'assistant'");
  return turns;
}

SftExample format_messages(const nlohmann::json& msgs, const ChatTemplate& chat, Pieces& p,
                           const std::string& where) {
  const std::vector<ChatMessage> turns = parse_messages(msgs, where);
  ChatRenderOptions with_prompt, without_prompt;
  without_prompt.add_generation_prompt = false;
  std::string done;  // rendered so far
  std::vector<ChatMessage> upto;
  for (const ChatMessage& m : turns) {
    if (m.role == "assistant") {
      const std::string prompt = chat.render(upto, with_prompt);
      upto.push_back(m);
      const std::string full = chat.render(upto, without_prompt);
      KILN_CHECK(
          prompt.compare(0, done.size(), done) == 0 && full.compare(0, prompt.size(), prompt) == 0,
          "sft", where, ": the chat template (", chat.origin().empty() ? "default" : chat.origin(),
          ") does not render a conversation as a prefix of its continuation, so the "
          "assistant's tokens cannot be told apart; use 'text' records or another template");
      p.add(std::string_view(prompt).substr(done.size()), false);
      p.add(std::string_view(full).substr(prompt.size()), true);
      done = full;
    } else {
      upto.push_back(m);
    }
  }
  // Turns after the last assistant's add no loss; they are left out.
  return p.finish();
}

}  // namespace

SftExample format_sft_record(const nlohmann::json& record, const Tokenizer& tok,
                             const ChatTemplate& chat, const SftOptions& opts,
                             const std::string& where) {
  KILN_CHECK(record.is_object(), "sft", where, ": a record must be a JSON object");
  Pieces p(tok, opts);
  if (record.contains("messages")) return format_messages(record["messages"], chat, p, where);
  if (record.contains("text")) return format_text(string_field(record, "text", where), p, where);
  if (record.contains("prompt") || record.contains("completion")) {
    const std::string& completion = string_field(record, "completion", where);
    KILN_CHECK(!completion.empty(), "sft", where, ": 'completion' is empty: nothing to learn");
    p.add(string_field(record, "prompt", where), false);
    p.add(completion, true);
    return p.finish();
  }
  fail(
      "sft", where, ": unknown record shape (keys: ",
      [&] {
        std::string keys;
        for (auto it = record.begin(); it != record.end(); ++it)
          keys += (keys.empty() ? "" : ", ") + it.key();
        return keys.empty() ? std::string("none") : keys;
      }(),
      "); use {\"text\": \"### Human: ... ### Assistant: ...\"}, {\"messages\": [...]} or "
      "{\"prompt\": ..., \"completion\": ...}");
}

namespace {

// Calls fn(record, "file:line") for every non-blank line of the JSONL file, in order.
template <typename Fn>
void for_each_record(const std::string& path, Fn&& fn) {
  LineReader reader(path);
  JsonlLine line;
  while (reader.next(line)) {
    const std::string where = str(path, ":", line.number);
    KILN_CHECK(!line.too_long, "sft", where, ": the line is ", line.bytes,
               " bytes, over the reader's limit");
    if (line.text.find_first_not_of(" \t") == std::string_view::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line.text);
    } catch (const nlohmann::json::exception& e) {
      fail("sft", where, ": not valid JSON (", e.what(), ")");
    }
    if (!fn(record, where)) return;
  }
}

}  // namespace

std::vector<SftExample> load_sft_jsonl(const std::vector<std::string>& paths, const Tokenizer& tok,
                                       const ChatTemplate& chat, const SftOptions& opts,
                                       SftStats* stats) {
  KILN_CHECK(opts.max_seq_length == 0 || opts.max_seq_length >= 2, "sft",
             "data.max_seq_length must be at least 2 (or 0: one row), got ", opts.max_seq_length);
  std::vector<SftExample> out;
  SftStats s;
  for (const std::string& path : paths) {
    for_each_record(path, [&](const nlohmann::json& record, const std::string& where) {
      out.push_back(format_sft_record(record, tok, chat, opts, where));
      const SftExample& ex = out.back();
      s.truncated += ex.truncated;
      s.tokens += int64_t(ex.ids.size());
      s.loss_tokens += std::count(ex.loss.begin(), ex.loss.end(), uint8_t(1));
      return true;
    });
  }
  s.examples = int64_t(out.size());
  KILN_CHECK(!out.empty(), "sft", "no records in ", paths.empty() ? "(no files)" : paths[0],
             paths.size() > 1 ? " and the other files" : "");
  if (stats) *stats = s;
  return out;
}

SftTurn sft_last_turn(const nlohmann::json& record, const ChatTemplate& chat,
                      const std::string& where) {
  KILN_CHECK(record.is_object(), "sft", where, ": a record must be a JSON object");
  if (record.contains("messages")) {
    std::vector<ChatMessage> turns = parse_messages(record["messages"], where);
    while (turns.back().role != "assistant") turns.pop_back();
    SftTurn t{"", turns.back().content};
    turns.pop_back();
    t.prompt = chat.render(turns);
    return t;
  }
  if (record.contains("text")) {
    const std::string& text = string_field(record, "text", where);
    const size_t at = text.rfind(kAssistant);
    KILN_CHECK(at != std::string::npos, "sft", where, ": 'text' has no '", kAssistant, "' turn");
    const size_t reply = at + std::char_traits<char>::length(kAssistant);
    const size_t end = std::min(text.find(kHuman, reply), text.size());
    return {text.substr(0, reply), text.substr(reply, end - reply)};
  }
  return {string_field(record, "prompt", where), string_field(record, "completion", where)};
}

std::vector<SftTurn> load_sft_turns(const std::string& path, const ChatTemplate& chat,
                                    int64_t limit) {
  std::vector<SftTurn> out;
  for_each_record(path, [&](const nlohmann::json& record, const std::string& where) {
    out.push_back(sft_last_turn(record, chat, where));
    return limit <= 0 || int64_t(out.size()) < limit;
  });
  KILN_CHECK(!out.empty(), "sft", "no records in ", path);
  return out;
}

namespace {

// Writes example `ex` into row `ids`, `targets` of T positions: targets[t] = ids[t+1] where that
// token counts, else -1; the rest is padding (pad id in, -1 out).
void fill_row(const SftExample& ex, int T, int32_t pad, int32_t* ids, int32_t* targets) {
  const int n = int(ex.ids.size());
  for (int t = 0; t < T; ++t) {
    ids[t] = t < n ? ex.ids[size_t(t)] : pad;
    targets[t] = t + 1 < n && ex.loss[size_t(t + 1)] ? ex.ids[size_t(t + 1)] : -1;
  }
}

// Slots an example takes in a packed row: its n tokens are n - 1 inputs with targets (its last
// token is never an input whose target counts).
int packed_slots(const SftExample& ex) {
  return std::max(1, int(ex.ids.size()) - 1);
}

class SftSource : public BatchSource {
 public:
  SftSource(std::vector<SftExample> train, std::vector<SftExample> val, int T, uint64_t seed,
            int32_t pad, bool packing, std::string about)
      : train_(std::move(train)),
        val_(std::move(val)),
        T_(T),
        seed_(seed),
        pad_(pad),
        packing_(packing),
        about_(std::move(about)) {
    KILN_CHECK(!train_.empty(), "sft", "no training examples left after the validation split");
    shuffle();
  }
  void next(int B, int32_t* ids, int32_t* targets) override {
    if (packing_) return next_packed(B, ids, targets);
    for (int b = 0; b < B; ++b)
      fill_row(next_example(true), T_, pad_, ids + int64_t(b) * T_, targets + int64_t(b) * T_);
  }
  const int32_t* positions() const override { return packing_ ? positions_.data() : nullptr; }
  void eval_batch(int index, int B, int32_t* ids, int32_t* targets) const override {
    for (int b = 0; b < B; ++b)
      fill_row(val_[size_t(int64_t(index) * B + b)], T_, pad_, ids + int64_t(b) * T_,
               targets + int64_t(b) * T_);
  }
  int64_t eval_batches_available(int B) const override { return int64_t(val_.size()) / B; }
  nlohmann::json state() const override { return {{"sft_epoch", epoch_}, {"sft_pos", pos_}}; }
  void set_state(const nlohmann::json& j) override {
    KILN_CHECK(j.contains("sft_epoch") && j.contains("sft_pos"), "sft",
               "the checkpoint's loader state is not an SFT loader's (", j.dump(),
               "): was the run started with other data?");
    epoch_ = j["sft_epoch"].get<int64_t>();
    pos_ = j["sft_pos"].get<int64_t>();
    shuffle();
    KILN_CHECK(pos_ >= 0 && pos_ <= int64_t(order_.size()), "sft", "the checkpoint's position ",
               pos_, " is past the ", order_.size(), " training examples: the data changed");
  }
  std::string describe() const override { return about_; }

 private:
  // The next example of the shuffled stream; `take` moves past it (else it stays next).
  const SftExample& next_example(bool take) {
    if (pos_ == int64_t(order_.size())) {
      ++epoch_;
      pos_ = 0;
      shuffle();
    }
    return train_[order_[size_t(take ? pos_++ : pos_)]];
  }
  // Rows filled with whole examples while they fit (n - 1 slots each); the rest of a row is
  // padding, a sequence of its own that counts in no loss.
  void next_packed(int B, int32_t* ids, int32_t* targets) {
    positions_.assign(size_t(B) * T_, 0);
    for (int b = 0; b < B; ++b) {
      int32_t *id = ids + int64_t(b) * T_, *tg = targets + int64_t(b) * T_;
      int32_t* ps = positions_.data() + int64_t(b) * T_;
      int at = 0;
      while (true) {
        const SftExample& ex = next_example(false);
        const int n = packed_slots(ex);
        if (at > 0 && at + n > T_) break;  // (an example always fits an empty row)
        fill_row(ex, n, pad_, id + at, tg + at);
        for (int t = 0; t < n; ++t) ps[at + t] = t;
        at += n;
        next_example(true);
        if (at == T_) break;
      }
      for (int t = at; t < T_; ++t) id[t] = pad_, tg[t] = -1, ps[t] = t - at;
    }
  }

  void shuffle() {  // the order of epoch_, from the seed alone
    order_.resize(train_.size());
    std::iota(order_.begin(), order_.end(), size_t(0));
    Rng rng(seed_ ^ (0x5f7a11ull * uint64_t(epoch_ + 1)));
    for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
  }

  std::vector<SftExample> train_, val_;
  std::vector<size_t> order_;
  int T_;
  uint64_t seed_;
  int32_t pad_;
  bool packing_;
  std::string about_;
  int64_t epoch_ = 0, pos_ = 0;
  std::vector<int32_t> positions_;  // (B, T) of the last packed batch
};

}  // namespace

std::unique_ptr<BatchSource> open_sft_source(SftSpec spec, const Tokenizer& tok,
                                             const ChatTemplate& chat, int T, uint64_t seed) {
  if (spec.options.max_seq_length == 0) spec.options.max_seq_length = T + 1;
  KILN_CHECK(spec.options.max_seq_length <= T + 1, "sft", "data.max_seq_length (",
             spec.options.max_seq_length, ") must be at most train.seq_len + 1 (", T + 1,
             "): an example is one row of the batch");
  SftStats st;
  std::vector<SftExample> train = load_sft_jsonl(spec.train, tok, chat, spec.options, &st);
  std::vector<SftExample> val;
  if (!spec.val.empty()) {
    val = load_sft_jsonl({spec.val}, tok, chat, spec.options);
  } else if (spec.val_fraction > 0) {
    // A fixed slice: every example whose seeded hash falls under the fraction.
    std::vector<SftExample> keep;
    for (size_t i = 0; i < train.size(); ++i) {
      Rng h(seed * 0x9e3779b97f4a7c15ull + i);
      (h.uniform_double() < spec.val_fraction ? val : keep).push_back(std::move(train[i]));
    }
    train = std::move(keep);
  }
  const std::string about =
      str(st.examples, " SFT examples (", train.size(), " train, ", val.size(), " validation), ",
          st.tokens, " tokens of which ", st.loss_tokens, " count in the loss",
          spec.options.assistant_only_loss ? " (assistant/completion only)" : "", "; ",
          st.truncated, " cut to data.max_seq_length = ", spec.options.max_seq_length);
  std::string packed;
  if (spec.packing) {  // how full the rows get: one epoch in file order, packed as next() packs
    int64_t rows = 1, at = 0, slots = 0;
    for (const SftExample& ex : train) {
      const int n = packed_slots(ex);
      if (at > 0 && at + n > T) ++rows, at = 0;
      at += n;
      slots += n;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "; packed into rows: %.2f examples per row, %.1f%% of slots used",
                  double(train.size()) / double(rows), 100.0 * double(slots) / double(rows * T));
    packed = buf;
  }
  return std::make_unique<SftSource>(std::move(train), std::move(val), T, seed,
                                     tok.eos_id().value_or(0), spec.packing, about + packed);
}

}  // namespace kiln

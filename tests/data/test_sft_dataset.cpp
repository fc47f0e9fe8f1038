#include "kiln/data/sft_dataset.h"

#include <gtest/gtest.h>

#include <set>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

// Byte-level ids make the expected masks readable: a token is a byte.
const Tokenizer& tok() {
  static const Tokenizer t = Tokenizer::byte_level({"<|endoftext|>"});
  return t;
}
const int32_t kEos = 256;

// The text of the tokens that count in the loss, and of those that do not.
std::pair<std::string, std::string> split(const SftExample& ex) {
  std::vector<int32_t> in, out;
  for (size_t i = 0; i < ex.ids.size(); ++i) (ex.loss[i] ? in : out).push_back(ex.ids[i]);
  return {tok().decode(in), tok().decode(out)};
}

SftExample format(const std::string& json, SftOptions opts = {},
                  const ChatTemplate& chat = ChatTemplate::guanaco()) {
  return format_sft_record(nlohmann::json::parse(json), tok(), chat, opts, "t.jsonl:1");
}

TEST(SftDataset, GuanacoTextCountsOnlyTheAssistantsTurnsAndEos) {
  SftExample ex = format(
      R"({"text": "### Human: Hi there### Assistant: Hello!### Human: Bye### Assistant: Ciao."})");
  ASSERT_EQ(ex.ids.size(), ex.loss.size());
  EXPECT_EQ(ex.ids.back(), kEos);
  EXPECT_EQ(ex.loss.back(), 1);
  auto [counted, prompt] = split(ex);
  EXPECT_EQ(counted, " Hello! Ciao.<|endoftext|>");
  EXPECT_EQ(prompt, "### Human: Hi there### Assistant:### Human: Bye### Assistant:");
  // Token by token: every byte of " Hello!" counts, the marker before it does not.
  const std::string text = tok().decode(ex.ids);
  const size_t at = text.find(" Hello!");
  for (size_t i = 0; i < ex.ids.size(); ++i)
    EXPECT_EQ(ex.loss[i], (i >= at && i < at + 7) || i >= text.find(" Ciao.")) << i;
}

TEST(SftDataset, MessagesRenderedWithTheTemplateCountTheAssistantOnly) {
  SftExample ex = format(R"({"messages": [{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": " 4"},
      {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": " 6"}]})");
  const std::string text = tok().decode(ex.ids);
  std::vector<ChatMessage> all = {{"system", "Be brief."},
                                  {"user", "2+2?"},
                                  {"assistant", " 4"},
                                  {"user", "3+3?"},
                                  {"assistant", " 6"}};
  ChatRenderOptions whole;
  whole.add_generation_prompt = false;
  EXPECT_EQ(text, ChatTemplate::guanaco().render(all, whole) + "<|endoftext|>");
  auto [counted, prompt] = split(ex);
  EXPECT_EQ(counted, " 4  6 <|endoftext|>");  // each reply with the template's text after it
}

TEST(SftDataset, ChatmlTemplateCountsTheEndOfTurnMarker) {
  const Tokenizer t = Tokenizer::byte_level({"<|im_start|>", "<|im_end|>", "<|endoftext|>"});
  ChatTemplate chat = ChatTemplate::load(kChatmlTemplate, {}, "chatml");
  SftExample ex =
      format_sft_record(nlohmann::json::parse(R"({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]})"),
                        t, chat, {}, "t.jsonl:1");
  std::vector<int32_t> counted;
  for (size_t i = 0; i < ex.ids.size(); ++i)
    if (ex.loss[i]) counted.push_back(ex.ids[i]);
  EXPECT_EQ(t.decode(counted), "yo<|im_end|>\n<|endoftext|>");
  EXPECT_EQ(t.decode(ex.ids).rfind("<|im_start|>assistant\n", 0), std::string::npos);
  EXPECT_TRUE(has(t.decode(ex.ids), "<|im_start|>assistant\nyo<|im_end|>"));
}

TEST(SftDataset, PromptCompletionCountsTheCompletion) {
  SftExample ex = format(R"({"prompt": "Q: 1+1 A:", "completion": " 2"})");
  auto [counted, prompt] = split(ex);
  EXPECT_EQ(counted, " 2<|endoftext|>");
  EXPECT_EQ(prompt, "Q: 1+1 A:");
}

TEST(SftDataset, AllTokensCountWhenSwitchedAndTheFirstNever) {
  SftOptions all;
  all.assistant_only_loss = false;
  SftExample ex = format(R"({"prompt": "ab", "completion": "c"})", all);
  EXPECT_EQ(ex.loss, (std::vector<uint8_t>{0, 1, 1, 1}));  // a b c eos: nothing predicts "a"
}

TEST(SftDataset, LongExamplesAreCutAndCounted) {
  SftOptions opts;
  opts.max_seq_length = 8;
  SftExample ex = format(R"({"prompt": "abc", "completion": "defghijk"})", opts);
  EXPECT_TRUE(ex.truncated);
  EXPECT_EQ(ex.ids.size(), 8u);
  EXPECT_EQ(tok().decode(ex.ids), "abcdefgh");
}

TEST(SftDataset, BadRecordsNameTheLineAndTheProblem) {
  TempDir dir;
  const std::pair<std::string, std::string> cases[] = {
      {R"({"text": "no turns here"})", "has no '### Assistant:' turn"},
      {R"({"messages": [{"role": "user", "content": "hi"}]})", "no assistant message"},
      {R"({"messages": [{"role": "robot", "content": "hi"}]})", "unknown role 'robot'"},
      {R"({"messages": [{"role": "user", "content": 3}]})",
       "messages[0]: 'content' must be a string"},
      {R"({"messages": []})", "must be a non-empty list"},
      {R"({"prompt": "a", "completion": ""})", "'completion' is empty"},
      {R"({"input": "a"})", "unknown record shape (keys: input)"},
      {R"([1, 2])", "must be a JSON object"},
      {R"({"text": )", "not valid JSON"},
  };
  for (const auto& [line, piece] : cases) {
    const std::string path = dir.file("d.jsonl");
    write_file_atomic(path, R"({"prompt": "a", "completion": "b"})"
                            "\n\n" +
                                line + "\n");
    const std::string msg =
        error_of([&] { load_sft_jsonl({path}, tok(), ChatTemplate::guanaco(), {}); });
    EXPECT_TRUE(has(msg, path + ":3: ")) << msg;
    EXPECT_TRUE(has(msg, piece)) << msg;
  }
}

TEST(SftDataset, LastTurnIsThePromptAsAtInferenceAndTheReply) {
  const ChatTemplate chat = ChatTemplate::guanaco();
  auto turn = [&](const char* json) {
    return sft_last_turn(nlohmann::json::parse(json), chat, "t.jsonl:1");
  };
  SftTurn t = turn(R"({"text": "### Human: a### Assistant: b### Human: c### Assistant: d"})");
  EXPECT_EQ(t.prompt, "### Human: a### Assistant: b### Human: c### Assistant:");
  EXPECT_EQ(t.reply, " d");
  t = turn(
      R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
              {"role": "user", "content": "bye"}]})");
  EXPECT_EQ(t.prompt, "### Human: hi ### Assistant:");  // turns after the last reply are dropped
  EXPECT_EQ(t.reply, "yo");
  t = turn(R"({"prompt": "Q:", "completion": " A"})");
  EXPECT_EQ(t.prompt, "Q:");
  EXPECT_EQ(t.reply, " A");
  EXPECT_TRUE(has(error_of([&] { turn(R"({"messages": [{"role": "user", "content": "x"}]})"); }),
                  "no assistant message"));
}

// Writes n prompt/completion records; record i's completion is "<i>".
std::string write_records(TempDir& dir, int n, const std::string& name = "d.jsonl") {
  std::string text;
  for (int i = 0; i < n; ++i)
    text += nlohmann::json{{"prompt", "Q" + std::to_string(i) + ":"},
                           {"completion", "<" + std::to_string(i) + ">"}}
                .dump() +
            "\n";
  const std::string path = dir.file(name);
  write_file_atomic(path, text);
  return path;
}

TEST(SftDataset, BatchesAreRowsWithIgnoredPromptAndPadding) {
  TempDir dir;
  SftSpec spec;
  spec.train = {write_records(dir, 1)};
  spec.val_fraction = 0;
  const int T = 12;
  auto src = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 7);
  std::vector<int32_t> ids(T), targets(T);
  src->next(1, ids.data(), targets.data());
  // "Q0:<0><eos>": inputs are the example then padding (eos); targets predict "<0>" and eos only.
  const std::string ex = "Q0:<0>";
  for (int t = 0; t < T; ++t) {
    EXPECT_EQ(ids[t], t < 6 ? int32_t(uint8_t(ex[size_t(t)])) : kEos) << t;
    const int32_t want = t >= 2 && t < 5 ? int32_t(uint8_t(ex[size_t(t + 1)])) : t == 5 ? kEos : -1;
    EXPECT_EQ(targets[t], want) << t;
  }
}

TEST(SftDataset, EpochsShuffleDeterministicallyAndResumeExactly) {
  TempDir dir;
  SftSpec spec;
  spec.train = {write_records(dir, 10)};
  spec.val_fraction = 0;
  const int T = 8, B = 3;
  auto a = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 1);
  auto b = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 1);
  std::vector<int32_t> ia(B * T), ta(B * T), ib(B * T), tb(B * T);
  std::multiset<int32_t> first_epoch;  // each example once per epoch
  for (int step = 0; step < 5; ++step) {
    if (step == 2) b->set_state(a->state());  // b resumes where a is
    a->next(B, ia.data(), ta.data());
    if (step >= 2) {
      b->next(B, ib.data(), tb.data());
      EXPECT_EQ(ia, ib);
      EXPECT_EQ(ta, tb);
    }
    for (int r = 0; r < B && step * B + r < 9; ++r) first_epoch.insert(ia[size_t(r * T + 1)]);
  }
  EXPECT_EQ(first_epoch.size(), 9u);
  EXPECT_EQ(std::set<int32_t>(first_epoch.begin(), first_epoch.end()).size(), 9u);
  auto c = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 2);
  std::vector<int32_t> ic(B * T), tc(B * T);
  c->next(B, ic.data(), tc.data());
  auto d = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 1);
  d->next(B, ib.data(), tb.data());
  EXPECT_NE(ic, ib);  // another seed, another order
}

// Packing: rows hold whole examples in the unpacked stream's order (each n tokens in n - 1
// slots, inputs and targets as unpacked), positions restart at 0 per example, the rest of a row
// is padding counted in no loss; resuming mid-stream repeats the rows.
TEST(SftDataset, PackingFillsRowsWithWholeExamplesInOrder) {
  TempDir dir;
  SftSpec spec;
  spec.train = {write_records(dir, 30)};
  spec.val_fraction = 0;
  const int T = 24, B = 2, steps = 6;
  auto plain = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 5);
  spec.packing = true;
  auto packed = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 5);
  auto resumed = open_sft_source(spec, tok(), ChatTemplate::guanaco(), T, 5);
  EXPECT_EQ(plain->positions(), nullptr);
  std::vector<int32_t> ids(T), tg(T), pids(B * T), ptg(B * T), rids(B * T), rtg(B * T);
  // The unpacked stream, example by example: its first n - 1 slots.
  auto next_plain = [&] {
    plain->next(1, ids.data(), tg.data());
    int n = 0;
    while (n + 1 < T && !(ids[size_t(n)] == kEos && tg[size_t(n)] == -1)) ++n;
    return std::make_pair(std::vector<int32_t>(ids.begin(), ids.begin() + n),
                          std::vector<int32_t>(tg.begin(), tg.begin() + n));
  };
  int examples = 0, padding = 0;
  for (int step = 0; step < steps; ++step) {
    if (step == 3) resumed->set_state(packed->state());
    packed->next(B, pids.data(), ptg.data());
    const std::vector<int32_t> pos(packed->positions(), packed->positions() + B * T);
    if (step >= 3) {
      resumed->next(B, rids.data(), rtg.data());
      EXPECT_EQ(rids, pids);
      EXPECT_EQ(std::vector<int32_t>(resumed->positions(), resumed->positions() + B * T), pos);
    }
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T;) {
        const size_t at = size_t(b) * T + t;
        ASSERT_EQ(pos[at], 0) << "a sequence starts at 0";
        int n = 1;
        while (t + n < T && pos[at + n] != 0) ++n;
        if (pids[at] == kEos) {  // the row's padding: the rest of it
          for (int k = 0; k < n; ++k) EXPECT_EQ(ptg[at + k], -1);
          EXPECT_EQ(t + n, T);
          ++padding;
        } else {
          const auto [want_ids, want_tg] = next_plain();
          EXPECT_EQ(std::vector<int32_t>(pids.begin() + at, pids.begin() + at + n), want_ids);
          EXPECT_EQ(std::vector<int32_t>(ptg.begin() + at, ptg.begin() + at + n), want_tg);
          ++examples;
        }
        t += n;
      }
  }
  EXPECT_GT(examples, 2 * B * steps);  // several examples a row
  EXPECT_GT(padding, 0);
}

TEST(SftDataset, ValidationSliceIsFixedAndDisjoint) {
  TempDir dir;
  SftSpec spec;
  spec.train = {write_records(dir, 200)};
  spec.val_fraction = 0.1;
  auto src = open_sft_source(spec, tok(), ChatTemplate::guanaco(), 8, 3);
  const int64_t n = src->eval_batches_available(1);
  EXPECT_GT(n, 5);
  EXPECT_LT(n, 40);
  EXPECT_TRUE(has(src->describe(), "200 SFT examples"));
  EXPECT_TRUE(has(src->describe(), std::to_string(n) + " validation"));
}

TEST(SftDataset, ExamplesLongerThanARowAreRefused) {
  TempDir dir;
  SftSpec spec;
  spec.train = {write_records(dir, 2)};
  spec.options.max_seq_length = 64;
  EXPECT_TRUE(has(error_of([&] { open_sft_source(spec, tok(), ChatTemplate::guanaco(), 16, 1); }),
                  "must be at most train.seq_len + 1"));
}

}  // namespace
}  // namespace kiln

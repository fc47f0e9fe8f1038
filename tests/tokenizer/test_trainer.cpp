// BPE training: the vocabulary is full, deterministic across thread counts, saves and reloads to
// the same encoder, and compresses the text it was trained on.
#include "kiln/tokenizer/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/io/file.h"
#include "oracle.h"

namespace kiln {
namespace {

std::string corpus() {
  std::ifstream in(oracle::source_dir() + "/data/brown.txt");
  std::string text(300000, '\0');
  in.read(text.data(), std::streamsize(text.size()));
  text.resize(size_t(in.gcount()));
  return text;
}

std::vector<std::string_view> lines_of(const std::string& text) {
  std::vector<std::string_view> docs;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    end = end == std::string::npos ? text.size() : end + 1;
    docs.push_back(std::string_view(text).substr(pos, end - pos));
    pos = end;
  }
  return docs;
}

TEST(Trainer, TrainsSavesReloadsDeterministically) {
  std::string text = corpus();
  ASSERT_GT(text.size(), 100000u) << "data/brown.txt missing: run scripts/fetch_data.sh";
  auto docs = lines_of(text);
  BpeTrainOptions opts;
  opts.vocab_size = 1000;
  opts.specials = {"<|endoftext|>", "<|pad|>"};
  opts.progress = false;

  set_num_threads(1);
  Tokenizer one = train_bpe(docs, opts);
  set_num_threads(2);
  Tokenizer two = train_bpe(docs, opts);
  set_num_threads(0);

  EXPECT_EQ(one.vocab_size(), 1000);
  EXPECT_EQ(one.special_id("<|endoftext|>"), 998);
  EXPECT_EQ(one.eos_id(), 998);
  for (int32_t id = 0; id < one.vocab_size(); ++id)
    ASSERT_EQ(one.token_bytes(id), two.token_bytes(id));
  // Byte ids are the byte-level vocabulary's.
  for (int b = 0; b < 256; ++b) EXPECT_EQ(one.token_bytes(b), std::string(1, char(b)));

  std::string path = (std::filesystem::temp_directory_path() / "kiln_trained_tok.json").string();
  one.save(path);
  Tokenizer back = Tokenizer::load(path);
  EXPECT_EQ(back.vocab_size(), one.vocab_size());
  std::string probe = text.substr(0, 20000) + " <|endoftext|> héllo wörld 😀 \xFF\xFE";
  EXPECT_EQ(back.encode(probe, true), one.encode(probe, true));
  EXPECT_EQ(back.encode(probe, false), one.encode(probe, false));
  EXPECT_EQ(one.decode(one.encode(probe)), probe);
  // Compresses: fewer than 1 token per 2.5 bytes of English.
  EXPECT_LT(double(one.encode(text).size()), double(text.size()) / 2.5);
  std::filesystem::remove(path);
}

TEST(Trainer, HuggingFaceTokenizersAgreesOnTheSavedFile) {
  // The tokenizer.json kiln writes, run by Hugging Face's tokenizers.js, gives kiln's ids.
  KILN_REQUIRE_REFS();
  std::string text = corpus();
  auto docs = lines_of(text);
  auto texts = oracle::nlp_corpus(200);
  auto adv = oracle::adversarial();
  texts.insert(texts.end(), adv.begin(), adv.end());
  for (Pattern p : {Pattern::llama3, Pattern::o200k, Pattern::gpt2}) {
    BpeTrainOptions opts;
    opts.vocab_size = 1500;
    opts.pattern = p;
    opts.specials = {"<|endoftext|>", "<|endofprompt|>"};
    opts.progress = false;
    Tokenizer tok = train_bpe(docs, opts);
    std::string path = (std::filesystem::temp_directory_path() /
                        (std::string("kiln_hf_") + pattern_name(p) + ".json"))
                           .string();
    tok.save(path);
    oracle::expect_same_ids(tok, "hf:" + path, texts, /*special=*/true);
    std::filesystem::remove(path);
  }
}

TEST(Trainer, RejectsTooSmallVocab) {
  BpeTrainOptions opts;
  opts.vocab_size = 200;
  opts.progress = false;
  EXPECT_THROW(train_bpe({"abc"}, opts), kiln::Error);
}

}  // namespace
}  // namespace kiln

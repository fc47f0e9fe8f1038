// Megatron indexed dataset: kiln's writer read back by kiln's reader and by an independent
// Python reader written from the documented format (read_megatron_idx.py); corrupt files give
// clear errors; `data tokenize` (the library call) writes exactly encode(text) + eos per document,
// skips bad lines with their line numbers, and gives the same bytes at any thread count.
#include "kiln/data/indexed_dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/core/rng.h"
#include "kiln/data/indexed_dataset_tokenize.h"
#include "kiln/io/file.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::TempDir;

// Documents with lengths 1..max_len (and one of exactly 1 token), ids below `vocab`.
std::vector<std::vector<int32_t>> random_docs(int n, int max_len, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int32_t>> docs(static_cast<size_t>(n));
  for (int d = 0; d < n; ++d) {
    size_t len = d == 0 ? 1 : 1 + rng.below(uint64_t(max_len));
    for (size_t j = 0; j < len; ++j) docs[size_t(d)].push_back(int32_t(rng.below(uint64_t(vocab))));
  }
  return docs;
}

void write(const std::string& prefix, TokenDtype dt,
           const std::vector<std::vector<int32_t>>& docs) {
  IndexedDatasetWriter w(prefix, dt);
  for (const auto& d : docs) w.add_document(d);
  w.finalize();
}

nlohmann::json python_read(const std::string& prefix, const std::string& out) {
  std::string script = test::source_dir() + "/tests/data/read_megatron_idx.py";
  auto r = test::run_command("/usr/bin/python3 " + script + " " + prefix + " " + out);
  EXPECT_EQ(r.status, 0) << r.output;
  return nlohmann::json::parse(read_file(out));
}

std::string error_of(const std::string& prefix) {
  try {
    IndexedDataset::open(prefix);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(IndexedDataset, DtypeFollowsMegatronRule) {
  EXPECT_EQ(token_dtype_for_vocab(32000), TokenDtype::uint16);
  EXPECT_EQ(token_dtype_for_vocab(65499), TokenDtype::uint16);
  EXPECT_EQ(token_dtype_for_vocab(65500), TokenDtype::int32);
  EXPECT_EQ(token_dtype_for_vocab(128256), TokenDtype::int32);
}

TEST(IndexedDataset, RoundTripsThroughKilnAndPythonReaders) {
  TempDir dir("idx");
  struct Case {
    TokenDtype dt;
    int64_t vocab;
  };
  for (Case c : {Case{TokenDtype::uint16, 65535}, Case{TokenDtype::int32, 200000}}) {
    auto docs = random_docs(300, 700, c.vocab, 7 + uint64_t(c.dt));
    std::string prefix = dir / str("ds", int(c.dt));
    write(prefix, c.dt, docs);

    auto ds = IndexedDataset::open(prefix);
    ASSERT_EQ(ds->num_documents(), 300);
    ASSERT_EQ(ds->num_sequences(), 300);
    EXPECT_EQ(ds->dtype(), c.dt);
    int64_t total = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      EXPECT_EQ(ds->document_index(int64_t(d)), int64_t(d));
      ASSERT_EQ(ds->sequence(int64_t(d)), docs[d]) << "doc " << d;
      total += int64_t(docs[d].size());
    }
    EXPECT_EQ(ds->num_tokens(), total);
    EXPECT_EQ(std::filesystem::file_size(prefix + ".bin"), size_t(total) * token_dtype_size(c.dt));
    // A slice in the middle of a document.
    std::vector<int32_t> part(3);
    ds->read(5, 1, 3, part.data());
    if (docs[5].size() >= 4)
      EXPECT_EQ(part, std::vector<int32_t>(docs[5].begin() + 1, docs[5].begin() + 4));

    auto py = python_read(prefix, dir / "py.json");
    EXPECT_EQ(py["dtype"].get<int>(), int(c.dt));
    EXPECT_EQ(py["sequence_count"].get<int64_t>(), 300);
    auto di = py["document_indices"].get<std::vector<int64_t>>();
    ASSERT_EQ(di.size(), 301u);
    for (size_t j = 0; j < di.size(); ++j) EXPECT_EQ(di[j], int64_t(j));
    EXPECT_EQ(py["documents"].get<std::vector<std::vector<int32_t>>>(), docs);
  }
}

TEST(IndexedDataset, TypedAccessIsZeroCopyAndChecked) {
  TempDir dir("idx");
  write(dir / "a", TokenDtype::uint16, {{1, 2, 65535}, {7}});
  auto ds = IndexedDataset::open(dir / "a");
  auto s = ds->typed_sequence<uint16_t>(0);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[2], 65535);
  EXPECT_THROW(ds->typed_sequence<int32_t>(0), Error);
  EXPECT_THROW(ds->typed_sequence<int16_t>(0), Error);
  EXPECT_THROW(ds->sequence(2), Error);
  std::vector<int32_t> out(2);
  EXPECT_THROW(ds->read(0, 2, 2, out.data()), Error);
}

TEST(IndexedDataset, WriterRejectsIdsThatDoNotFitAndPublishesNothingUnfinished) {
  TempDir dir("idx");
  {
    IndexedDatasetWriter w(dir / "big", TokenDtype::uint16);
    std::vector<int32_t> ids = {1, 70000};
    try {
      w.add_document(ids);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("does not fit uint16"), std::string::npos) << e.what();
    }
  }
  {
    IndexedDatasetWriter w(dir / "unfinished", TokenDtype::int32);
    std::vector<int32_t> ids = {1, 2, 3};
    w.add_document(ids);
  }  // dropped without finalize
  for (auto& e : std::filesystem::directory_iterator(dir.path()))
    ADD_FAILURE() << "left behind: " << e.path();
}

TEST(IndexedDataset, CorruptFilesGiveClearErrors) {
  TempDir dir("idx");
  auto docs = random_docs(20, 50, 1000, 3);
  write(dir / "good", TokenDtype::uint16, docs);
  const std::string idx = read_file(dir / "good.idx"), bin = read_file(dir / "good.bin");
  auto variant = [&](const std::string& name, std::string i, std::string b) {
    write_file_atomic(dir / (name + ".idx"), i);
    write_file_atomic(dir / (name + ".bin"), b);
    return error_of(dir / name);
  };
  auto has = [](const std::string& msg, const char* want) {
    return msg.find(want) != std::string::npos;
  };
  EXPECT_EQ(error_of(dir / "good"), "");

  std::string bad = idx;
  bad[0] = 'X';
  EXPECT_TRUE(has(variant("magic", bad, bin), "does not start with MMIDIDX"));
  bad = idx;
  bad[9] = 2;
  EXPECT_TRUE(has(variant("version", bad, bin), "version 2"));
  bad = idx;
  bad[17] = 7;
  EXPECT_TRUE(has(variant("float", bad, bin), "dtype code 7"));
  bad = idx;
  bad[17] = 9;
  EXPECT_TRUE(has(variant("code", bad, bin), "dtype code 9"));
  EXPECT_TRUE(has(variant("short", idx.substr(0, 20), bin), "truncated"));
  EXPECT_TRUE(has(variant("truncidx", idx.substr(0, idx.size() - 8), bin), "truncated"));
  EXPECT_TRUE(
      has(variant("truncbin", idx, bin.substr(0, bin.size() - 2)), "the .bin is truncated"));
  bad = idx;
  int64_t huge = int64_t(1) << 40;
  std::memcpy(bad.data() + 34 + 4 * 20 + 8 * 3, &huge, 8);  // pointer of sequence 3
  EXPECT_TRUE(has(variant("pointer", bad, bin), "sequence 3"));
  bad = idx;
  int64_t wrong = 5;
  std::memcpy(bad.data() + 34 + 4 * 20 + 8 * 20 + 8 * 20, &wrong, 8);  // last document index
  EXPECT_TRUE(has(variant("docidx", bad, bin), "document indices must run from 0 to 20"));
  EXPECT_TRUE(has(error_of(dir / "missing"), "expected"));
}

// A pointer near INT64_MAX made ptr + len * w wrap negative, pass the bounds check, and read()
// then read far outside the .bin (issue 17). Counts over core/limits.h are named with the limit.
TEST(IndexedDataset, CraftedPointersAndCountsNameFieldValueAndLimit) {
  TempDir dir("idx");
  write(dir / "good", TokenDtype::uint16, random_docs(20, 50, 1000, 3));
  const std::string idx = read_file(dir / "good.idx"), bin = read_file(dir / "good.bin");
  write_file_atomic(dir / "bad.bin", bin);
  auto idx_error = [&](std::string bad) {
    write_file_atomic(dir / "bad.idx", bad);
    return error_of(dir / "bad");
  };
  std::string bad = idx;
  const int64_t wraps = std::numeric_limits<int64_t>::max() - 7;  // even, so 2-byte aligned
  std::memcpy(bad.data() + 34 + 4 * 20 + 8 * 3, &wraps, 8);       // pointer of sequence 3
  std::string e = idx_error(bad);
  EXPECT_NE(e.find(dir / "bad.idx"), std::string::npos) << e;
  EXPECT_NE(e.find("sequence 3 has pointer 9223372036854775800 and length"), std::string::npos)
      << e;
  EXPECT_NE(e.find(str("(", bin.size(), " bytes)")), std::string::npos) << e;
  bad = idx;
  const uint64_t huge = uint64_t(1) << 50;
  std::memcpy(bad.data() + 18, &huge, 8);  // S
  e = idx_error(bad);
  EXPECT_NE(e.find("the sequence count S = 1125899906842624 is over kiln's limit of "
                   "1099511627776"),
            std::string::npos)
      << e;
}

// ---- data tokenize ----

TEST(TokenizeToIndexedDataset, WritesEncodeTextPlusEosAndSkipsBadLines) {
  TempDir dir("idx");
  Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
  ASSERT_TRUE(tok.eos_id().has_value());
  std::string jsonl =
      "{\"text\": \"Hello world\", \"id\": 1}\n"
      "not json\n"
      "{\"id\": 3}\n"
      "{\"text\": \"\"}\n"
      "{\"text\": 5}\n"
      "{\"text\": \"second \\u00e9 doc\\nwith a newline\"}\n"
      "{\"text\": \"bad \xff utf8\"}\n"
      "{\"text\": \"last, no newline\"}";
  write_file_atomic(dir / "in.jsonl", jsonl);
  write_file_atomic(dir / "in.txt", "line one\n\nline two\n");
  TokenizeOptions opts;
  opts.progress = false;
  auto rep =
      tokenize_to_indexed_dataset({dir / "in.jsonl", dir / "in.txt"}, tok, dir / "out/ds", opts);
  std::vector<std::string> texts = {"Hello world", "second \xc3\xa9 doc\nwith a newline",
                                    "last, no newline", "line one", "line two"};
  EXPECT_EQ(rep.documents, int64_t(texts.size()));
  EXPECT_EQ(rep.empty, 2);  // "" in JSONL, the blank .txt line
  EXPECT_EQ(rep.errors.total(), 4);
  std::vector<int64_t> bad_lines;
  for (auto& e : rep.errors.examples()) bad_lines.push_back(e.line);
  EXPECT_EQ(bad_lines, (std::vector<int64_t>{2, 3, 5, 7}));

  auto ds = IndexedDataset::open(dir / "out/ds");
  EXPECT_EQ(ds->dtype(), TokenDtype::uint16);
  auto py = python_read(dir / "out/ds", dir / "py.json");
  auto py_docs = py["documents"].get<std::vector<std::vector<int32_t>>>();
  ASSERT_EQ(py_docs.size(), texts.size());
  for (size_t d = 0; d < texts.size(); ++d) {
    auto want = tok.encode(texts[d]);
    want.push_back(*tok.eos_id());
    EXPECT_EQ(ds->sequence(int64_t(d)), want) << d;
    EXPECT_EQ(py_docs[d], want) << d;
  }

  opts.strict = true;
  try {
    tokenize_to_indexed_dataset({dir / "in.jsonl"}, tok, dir / "strict", opts);
    FAIL() << "strict mode must fail";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(file_exists(dir / "strict.idx"));
  EXPECT_FALSE(file_exists(dir / "strict.bin"));
}

TEST(TokenizeToIndexedDataset, SameBytesAtAnyThreadCountAndBatchSize) {
  TempDir dir("idx");
  Tokenizer tok = Tokenizer::byte_level({"<|endoftext|>"});
  std::string jsonl;
  Rng rng(11);
  for (int d = 0; d < 2000; ++d) {
    std::string text;
    size_t words = 1 + rng.below(60);
    for (size_t w = 0; w < words; ++w) text += str("w", rng.below(1000), w + 1 < words ? " " : "");
    jsonl += nlohmann::json{{"text", text}, {"n", d}}.dump() + "\n";
  }
  write_file_atomic(dir / "in.jsonl", jsonl);
  TokenizeOptions opts;
  opts.progress = false;
  int saved = num_threads();
  std::string bin1, idx1;
  for (int threads : {1, 2}) {
    for (int64_t batch : {int64_t(1) << 10, int64_t(16) << 20}) {
      set_num_threads(threads);
      opts.batch_bytes = batch;
      std::string p = dir / str("t", threads, "_", batch);
      auto rep = tokenize_to_indexed_dataset({dir / "in.jsonl"}, tok, p, opts);
      EXPECT_EQ(rep.documents, 2000);
      if (bin1.empty()) {
        bin1 = read_file(p + ".bin");
        idx1 = read_file(p + ".idx");
      } else {
        EXPECT_EQ(read_file(p + ".bin"), bin1);
        EXPECT_EQ(read_file(p + ".idx"), idx1);
      }
    }
  }
  set_num_threads(saved);
}

TEST(TokenizeToIndexedDataset, EmptyInputAndNoEosAreReported) {
  TempDir dir("idx");
  Tokenizer tok = Tokenizer::byte_level({});
  write_file_atomic(dir / "in.jsonl", "{\"text\": \"abc\"}\n");
  write_file_atomic(dir / "empty.jsonl", "");
  TokenizeOptions opts;
  opts.progress = false;
  EXPECT_THROW(tokenize_to_indexed_dataset({dir / "in.jsonl"}, tok, dir / "x", opts), Error);
  opts.append_eos = false;
  auto rep =
      tokenize_to_indexed_dataset({dir / "in.jsonl", dir / "empty.jsonl"}, tok, dir / "x", opts);
  EXPECT_EQ(rep.documents, 1);
  EXPECT_EQ(rep.errors.counts().at(JsonlIssue::empty_file), 1);
  EXPECT_EQ(IndexedDataset::open(dir / "x")->sequence(0), (std::vector<int32_t>{97, 98, 99}));
  EXPECT_THROW(tokenize_to_indexed_dataset({dir / "empty.jsonl"}, tok, dir / "y", opts), Error);
}

}  // namespace
}  // namespace kiln

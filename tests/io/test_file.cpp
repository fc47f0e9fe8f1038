#include "kiln/io/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "io/io_test_util.h"
#include "kiln/core/error.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

TEST(ReadFile, RoundTripsBinaryBytes) {
  TempDir dir;
  std::string bytes("a\0b\xff\n", 5);
  write_file_atomic(dir.file("x.bin"), bytes);
  EXPECT_EQ(read_file(dir.file("x.bin")), bytes);
}

TEST(ReadFile, EmptyFile) {
  TempDir dir;
  write_file_atomic(dir.file("empty"), "");
  EXPECT_EQ(read_file(dir.file("empty")), "");
}

TEST(ReadFile, FileWhoseSizeIsUnknown) {
  // /proc files stat as 0 bytes; read_file must read to EOF, not trust st_size.
  EXPECT_TRUE(has(read_file("/proc/self/status"), "Pid:"));
}

TEST(ReadFile, MissingFileNamesPathReasonAndFix) {
  TempDir dir;
  std::string path = dir.file("nope.txt");
  std::string msg = error_of([&] { read_file(path); });
  EXPECT_TRUE(has(msg, "[io]"));
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "No such file"));
  EXPECT_TRUE(has(msg, "check the path"));
}

TEST(ReadFile, DirectoryIsAnError) {
  TempDir dir;
  std::string msg = error_of([&] { read_file(dir.path); });
  EXPECT_TRUE(has(msg, dir.path));
  EXPECT_TRUE(has(msg, "directory"));
}

TEST(AtomicFile, StreamsAndReplaces) {
  TempDir dir;
  std::string path = dir.file("out.txt");
  write_file_atomic(path, "old contents");
  {
    AtomicFile f(path);
    f.write("new ");
    f.write("contents", 8);
    EXPECT_EQ(read_file(path), "old contents");  // nothing visible before commit
    f.commit();
  }
  EXPECT_EQ(read_file(path), "new contents");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, AbandonedWriteKeepsOldFileAndLeavesNoTemp) {
  TempDir dir;
  std::string path = dir.file("model.bin");
  write_file_atomic(path, "good bytes");
  try {
    AtomicFile f(path);
    f.write("half of the new");
    EXPECT_EQ(dir.list().size(), 2u);  // the temp file exists while writing
    throw std::runtime_error("simulated failure mid-write");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_file(path), "good bytes");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"model.bin"});
}

TEST(AtomicFile, AbandonedWriteOfNewFileLeavesNothing) {
  TempDir dir;
  {
    AtomicFile f(dir.file("new.bin"));
    f.write("x");
  }
  EXPECT_TRUE(dir.list().empty());
  EXPECT_FALSE(file_exists(dir.file("new.bin")));
}

TEST(AtomicFile, TempFileIsInTheSameDirectory) {
  TempDir dir;
  AtomicFile f(dir.file("a.txt"));
  EXPECT_EQ(std::filesystem::path(f.temp_path()).parent_path().string(), dir.path);
  EXPECT_TRUE(has(f.temp_path(), "a.txt.tmp."));
}

TEST(AtomicFile, UseAfterCommitThrows) {
  TempDir dir;
  AtomicFile f(dir.file("a.txt"));
  f.commit();
  EXPECT_THROW(f.write("x"), Error);
  EXPECT_THROW(f.commit(), Error);
  EXPECT_EQ(read_file(dir.file("a.txt")), "");
}

TEST(AtomicFile, MoveTransfersOwnership) {
  TempDir dir;
  AtomicFile a(dir.file("a.txt"));
  a.write("hello");
  AtomicFile b(std::move(a));
  b.commit();
  EXPECT_EQ(read_file(dir.file("a.txt")), "hello");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"a.txt"});
}

TEST(AtomicFile, KeepsPermissionBitsOfReplacedFile) {
  TempDir dir;
  std::string path = dir.file("secret");
  write_file_atomic(path, "v1");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  write_file_atomic(path, "v2");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(AtomicFile, MissingDirectoryNamesPath) {
  TempDir dir;
  std::string path = dir.file("no/such/dir/out.txt");
  std::string msg = error_of([&] { write_file_atomic(path, "x"); });
  EXPECT_TRUE(has(msg, path));
  EXPECT_TRUE(has(msg, "No such file"));
}

TEST(MappedFile, MapsContents) {
  TempDir dir;
  write_file_atomic(dir.file("m"), "mapped bytes");
  auto m = MappedFile::open(dir.file("m"));
  ASSERT_EQ(m->size(), 12u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), m->size()), "mapped bytes");
  EXPECT_EQ(m->path(), dir.file("m"));
}

TEST(MappedFile, EmptyFile) {
  TempDir dir;
  write_file_atomic(dir.file("e"), "");
  auto m = MappedFile::open(dir.file("e"));
  EXPECT_EQ(m->size(), 0u);
  EXPECT_EQ(m->data(), nullptr);
}

TEST(MappedFile, OutlivesTheFileAndNeverWritesIt) {
  TempDir dir;
  std::string path = dir.file("w");
  write_file_atomic(path, "abcd");
  auto m = MappedFile::open(path);
  m->mutable_data()[0] = 'X';  // copy-on-write: this process only
  EXPECT_EQ(read_file(path), "abcd");
  std::filesystem::remove(path);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(m->data()), 4), "Xbcd");
}

TEST(MappedFile, ErrorsNamePath) {
  TempDir dir;
  EXPECT_TRUE(has(error_of([&] { MappedFile::open(dir.file("missing")); }), dir.file("missing")));
  EXPECT_TRUE(has(error_of([&] { MappedFile::open(dir.path); }), "directory"));
}

TEST(Dirs, MakeDirsAndFileExists) {
  TempDir dir;
  std::string nested = dir.file("a/b/c");
  EXPECT_FALSE(file_exists(nested));
  make_dirs(nested);
  make_dirs(nested);  // existing is fine
  EXPECT_TRUE(file_exists(nested));
  write_file_atomic(nested + "/f.txt", "x");
  EXPECT_TRUE(file_exists(nested + "/f.txt"));
}

TEST(Dirs, MakeDirsThroughAFileFails) {
  TempDir dir;
  write_file_atomic(dir.file("f"), "x");
  std::string msg = error_of([&] { make_dirs(dir.file("f/sub")); });
  EXPECT_TRUE(has(msg, dir.file("f/sub")));
  msg = error_of([&] { make_dirs(dir.file("f")); });
  EXPECT_TRUE(has(msg, "a file with that name exists"));
}

}  // namespace
}  // namespace kiln

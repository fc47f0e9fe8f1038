#include "kiln/io/checksums.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/io_test_util.h"
#include "kiln/io/file.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;
using testing::TempDir;

void flip_byte(const std::string& path, int64_t at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c;
  f.get(c);
  f.seekp(at);
  f.put(char(c ^ 0x10));
}

TEST(Checksums, Crc32IsZlibs) {
  TempDir dir;
  write_file_atomic(dir.file("a"), "123456789");
  EXPECT_EQ(file_crc32(dir.file("a")), 0xCBF43926u);  // the standard check value
}

TEST(Checksums, UnchangedFilesPassAndEveryKindOfDamageIsNamed) {
  TempDir dir;
  std::string big(100000, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = char(i * 7);
  write_file_atomic(dir.file("model.safetensors"), big);
  write_file_atomic(dir.file("config.json"), "{}\n");
  write_checksums(dir.path);
  EXPECT_TRUE(has(read_file(dir.file("checksums.json")), "model.safetensors"));
  verify_checksums(dir.path);
  verify_checksums(dir.path, {"config.json", "not_listed.bin"});  // unlisted names: unchecked

  flip_byte(dir.file("model.safetensors"), 54321);  // one bit
  std::string msg = error_of([&] { verify_checksums(dir.path); });
  EXPECT_TRUE(has(msg, dir.file("model.safetensors") + " does not match its checksum")) << msg;
  verify_checksums(dir.path, {"config.json"});      // only what is asked for is read
  flip_byte(dir.file("model.safetensors"), 54321);  // back
  verify_checksums(dir.path);

  std::filesystem::resize_file(dir.file("model.safetensors"), 99999);
  EXPECT_TRUE(has(error_of([&] { verify_checksums(dir.path); }), "is 99999 bytes, but 100000"));
  std::filesystem::remove(dir.file("model.safetensors"));
  EXPECT_TRUE(has(error_of([&] { verify_checksums(dir.path); }), "is missing but listed"));
}

TEST(Checksums, ADirectoryWithoutChecksumsLoadsUnchecked) {
  TempDir dir;
  write_file_atomic(dir.file("model.safetensors"), "abc");
  verify_checksums(dir.path);
  write_file_atomic(dir.file("checksums.json"), "{\"files\": 3}");
  EXPECT_TRUE(has(error_of([&] { verify_checksums(dir.path); }), "is malformed"));
}

}  // namespace
}  // namespace kiln

#include "kiln/io/checksums.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/io/json_file.h"

namespace kiln {

namespace {

constexpr const char* kFile = "checksums.json";

std::string hex(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

}  // namespace

uint32_t file_crc32(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  KILN_CHECK(f, "checksum", "cannot open '", path, "'");
  std::vector<unsigned char> buf(1 << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) crc = crc32(crc, buf.data(), uInt(n));
  const bool failed = std::ferror(f);
  std::fclose(f);
  KILN_CHECK(!failed, "checksum", "reading '", path, "' failed");
  return uint32_t(crc);
}

void write_checksums(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != kFile)
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  nlohmann::json files = nlohmann::json::object();
  for (const std::string& name : names) {
    const std::string path = dir + "/" + name;
    files[name] = {{"bytes", fs::file_size(path)}, {"crc32", hex(file_crc32(path))}};
  }
  write_json_file_atomic(dir + "/" + kFile, {{"files", files}});
}

void verify_checksums(const std::string& dir, const std::vector<std::string>& only) {
  namespace fs = std::filesystem;
  const std::string list = dir + "/" + kFile;
  if (!file_exists(list)) return;
  const nlohmann::json j = read_json_file(list);
  KILN_CHECK(j.contains("files") && j["files"].is_object(), "checkpoint", list,
             " is malformed (no \"files\" object); the checkpoint is damaged");
  const nlohmann::json& files = j["files"];
  std::vector<std::string> names = only;
  if (names.empty())
    for (auto it = files.begin(); it != files.end(); ++it) names.push_back(it.key());
  for (const std::string& name : names) {
    if (!files.contains(name)) continue;
    const nlohmann::json& rec = files[name];
    KILN_CHECK(rec.is_object() && rec.contains("bytes") && rec["bytes"].is_number_unsigned() &&
                   rec.contains("crc32") && rec["crc32"].is_string(),
               "checkpoint", list, ": the entry for '", name, "' is malformed");
    const std::string path = dir + "/" + name;
    KILN_CHECK(file_exists(path), "checkpoint", path,
               " is missing but listed in checksums.json: the checkpoint is incomplete; copy the "
               "file back or use an earlier checkpoint");
    const uint64_t want_bytes = rec["bytes"].get<uint64_t>(), bytes = fs::file_size(path);
    KILN_CHECK(bytes == want_bytes, "checkpoint", path, " is ", bytes, " bytes, but ", want_bytes,
               " were saved (checksums.json): the file was truncated or replaced; "
               "use an earlier checkpoint or copy it again");
    const std::string want = rec["crc32"].get<std::string>(), got = hex(file_crc32(path));
    KILN_CHECK(got == want, "checkpoint", path, " does not match its checksum (CRC-32 ", got,
               ", saved ", want, " in checksums.json): its bytes changed on disk; use an earlier ",
               "checkpoint or copy the file again");
  }
}

}  // namespace kiln

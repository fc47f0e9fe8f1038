// Checksums of a directory's files (checksums.json: each file's size and CRC-32), written when a
// checkpoint is saved and checked when it is loaded, so a file whose bytes changed on disk (a
// flipped bit, a truncated copy) is named instead of loaded. Directories without checksums.json
// (Hugging Face checkpoints, older kiln ones) load unchecked.
// Cost: one read of each checked file (CRC-32 through zlib, several GB/s).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

// The CRC-32 (zlib's, as gzip and PNG use) of a file's bytes.
uint32_t file_crc32(const std::string& path);

// Writes DIR/checksums.json (atomically) for every regular file in `dir` except itself.
void write_checksums(const std::string& dir);

// Checks `files` (names in `dir`; empty: every file listed) against DIR/checksums.json when it
// exists; throws Error naming the file, its recorded and actual size or CRC, and the fix.
// A listed file that is not in checksums.json is not checked.
void verify_checksums(const std::string& dir, const std::vector<std::string>& files = {});

}  // namespace kiln

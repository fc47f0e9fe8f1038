// Files: whole-file reads, crash-safe writes, and read-only memory maps. Every error names the
// path, the OS's reason and a fix. This is the one place kiln touches open/mmap/rename directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

namespace kiln {

// The whole file as bytes. Cost: one read of the file into a fresh string.
std::string read_file(const std::string& path);

// True if anything (file, directory, ...) exists at `path`; false on any error.
bool file_exists(const std::string& path);

// mkdir -p: creates `path` and its missing parents; an existing directory is fine.
void make_dirs(const std::string& path);

// Writes a file so that `path` holds either its old contents or the complete new ones, never a
// mix, even if the process or machine dies midway: bytes go to a temp file in the same directory,
// and commit() flushes, fsyncs, renames it over `path` and fsyncs the directory. Dropping an
// AtomicFile without commit() (e.g. an exception while writing) deletes the temp file and leaves
// `path` untouched. A file being replaced keeps its permission bits.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // Publishes the file at path(). After commit, write() and commit() throw.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void abandon() noexcept;  // closes and deletes the temp file
  std::string path_, temp_path_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// write_file_atomic(path, bytes) == AtomicFile(path); write(bytes); commit().
void write_file_atomic(const std::string& path, std::string_view bytes);

// A whole file mapped into memory, copy-on-write: the file on disk is never modified, and a write
// through data() (e.g. by an op on a tensor viewing the map) changes only this process's copy.
// Pages load lazily on first touch, so opening a large file costs no reads. Shared ownership lets
// tensors that view the mapping keep it alive (Tensor::view's `keep`). An empty file maps to
// data() == nullptr, size() == 0.
class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() const { return data_; }  // copy-on-write, see above
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kiln

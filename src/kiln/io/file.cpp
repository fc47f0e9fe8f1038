#include "kiln/io/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "kiln/core/error.h"

namespace kiln {

namespace {

std::string os_reason(int err) {
  return std::system_category().message(err);
}

// The usual fix for each way a path can fail to open, read or write.
const char* fix_for(int err) {
  switch (err) {
    case ENOENT:
      return "check the path (a parent directory may be missing)";
    case EACCES:
    case EPERM:
      return "check the file's and its directory's permissions";
    case ENOSPC:
    case EDQUOT:
      return "free disk space or write somewhere else";
    case EISDIR:
      return "pass a file, not a directory";
    case EROFS:
      return "write to a writable filesystem";
    case EMFILE:
    case ENFILE:
      return "close other files or raise the open-file limit (ulimit -n)";
    default:
      return "check the path, permissions and free disk space";
  }
}

[[noreturn]] void fail_os(const char* what, const std::string& path, int err) {
  fail("io", "cannot ", what, " '", path, "': ", os_reason(err), "; ", fix_for(err));
}

// AtomicFile's errors name the file being written first; the temp file is a detail.
[[noreturn]] void fail_temp(const char* what, const std::string& path, const std::string& temp,
                            int err) {
  fail("io", "cannot write '", path, "': ", what, " its temp file '", temp,
       "' failed: ", os_reason(err), "; ", fix_for(err));
}

std::string parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// Closes fd on scope exit.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_os("open", path, errno);
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail_os("stat", path, errno);
  if (S_ISDIR(st.st_mode)) fail_os("read", path, EISDIR);
  std::string out;
  // st_size is only a hint: /proc files and pipes report 0, and a file may grow while we read.
  out.resize(S_ISREG(st.st_mode) && st.st_size > 0 ? size_t(st.st_size) : 4096);
  size_t got = 0;
  for (;;) {
    if (got == out.size()) out.resize(out.size() * 2);
    ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_os("read", path, errno);
    }
    if (n == 0) break;
    got += size_t(n);
  }
  out.resize(got);
  return out;
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_directory(path, ec)) {
    fail("io", "cannot create directory '", path,
         "': a file with that name exists; remove it or choose another path");
  }
  std::filesystem::create_directories(path, ec);
  if (ec) {
    fail("io", "cannot create directory '", path, "': ", ec.message(),
         "; check permissions, and that no part of the path is a file");
  }
}

// ---------------------------------------------------------------------------------------------
// AtomicFile

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  KILN_CHECK(!path_.empty(), "io", "cannot write a file with an empty path; pass a path");
  // pid keeps processes apart; the counter keeps two writers of one path in one process apart.
  static std::atomic<uint64_t> counter{0};
  temp_path_ = str(path_, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  int fd = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) fail_temp("creating", path_, temp_path_, errno);
  struct stat st;
  if (::stat(path_.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    ::fchmod(fd, st.st_mode & 07777);  // best effort: a replaced file keeps its mode
  }
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    int err = errno;
    ::close(fd);
    ::unlink(temp_path_.c_str());
    fail_temp("opening", path_, temp_path_, err);
  }
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      f_(other.f_),
      committed_(other.committed_) {
  other.f_ = nullptr;
  other.committed_ = true;  // the moved-from object owns no temp file
}

AtomicFile::~AtomicFile() {
  if (!committed_) abandon();
}

void AtomicFile::abandon() noexcept {
  if (f_) std::fclose(f_);
  f_ = nullptr;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  KILN_CHECK(f_ && !committed_, "io", "write to '", path_,
             "' after commit() or after a failed write; open a new AtomicFile");
  if (bytes == 0) return;
  if (std::fwrite(data, 1, bytes, f_) != bytes) {
    int err = errno;
    abandon();
    fail_temp("writing", path_, temp_path_, err);
  }
}

void AtomicFile::commit() {
  KILN_CHECK(f_ && !committed_, "io", "commit of '", path_,
             "' after commit() or after a failed write; open a new AtomicFile");
  std::FILE* f = f_;
  f_ = nullptr;
  int err = 0;
  if (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0) err = errno;
  if (std::fclose(f) != 0 && !err) err = errno;
  if (err) {
    abandon();
    fail_temp("writing", path_, temp_path_, err);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    err = errno;
    abandon();
    fail_os("replace", path_, err);
  }
  committed_ = true;
  // The rename is durable only once the directory entry is on disk. Failure here is not fatal:
  // the new file is already visible, some filesystems refuse to fsync a directory.
  int dfd = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

// ---------------------------------------------------------------------------------------------
// MappedFile

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_os("open", path, errno);
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) fail_os("stat", path, errno);
  if (S_ISDIR(st.st_mode)) fail_os("map", path, EISDIR);
  KILN_CHECK(S_ISREG(st.st_mode), "io", "cannot map '", path,
             "': not a regular file; copy it to a regular file first");
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = size_t(st.st_size);
  if (m->size_ == 0) return m;  // mmap rejects length 0
  // MAP_PRIVATE + PROT_WRITE is copy-on-write: the file is never modified. MAP_NORESERVE: no
  // swap is reserved for pages nobody writes, so mapping a 100 GB file costs nothing.
  void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) fail_os("map", path, errno);
  m->data_ = static_cast<uint8_t*>(p);
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace kiln

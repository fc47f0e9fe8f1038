// Helpers shared by tests above the ops layer: temporary directories, paths into the source
// tree, running commands.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace kiln::test {

// The repository root (set by ctest as KILN_SOURCE_DIR; falls back to the working directory).
inline std::string source_dir() {
  const char* s = std::getenv("KILN_SOURCE_DIR");
  return s ? s : std::filesystem::current_path().string();
}

// The build directory (set by ctest as KILN_BUILD_DIR; falls back to the working directory):
// where tests leave artifacts worth a look, such as screenshots.
inline std::string build_dir() {
  const char* s = std::getenv("KILN_BUILD_DIR");
  return s ? s : std::filesystem::current_path().string();
}

// The kiln binary (set by ctest as KILN_BINARY).
inline std::string kiln_binary() {
  const char* s = std::getenv("KILN_BINARY");
  return s ? s : "kiln";
}

// A fresh directory removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& tag = "kiln") {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             (tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++)))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CommandResult {
  int status;
  std::string output;  // stdout and stderr together
};

// Runs a shell command, capturing its output.
inline CommandResult run_command(const std::string& cmd) {
  CommandResult r{0, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace kiln::test

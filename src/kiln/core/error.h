// One error type for all of kiln. Messages name the operation, the offending value and the fix:
//   [safetensors] tensor 'lm_head.weight' ends at byte 91234 but the file has 80000 bytes: ...
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// str(a, b, c) concatenates anything that has operator<<.
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

// fail("rms_norm", "C must be positive, got ", C) throws Error("[rms_norm] C must be ...").
template <typename... Args>
[[noreturn]] void fail(const char* op, Args&&... args) {
  throw Error(str("[", op, "] ", std::forward<Args>(args)...));
}

}  // namespace kiln

// Always-on check for inputs from outside (files, configs, requests).
#define KILN_CHECK(cond, op, ...)               \
  do {                                          \
    if (!(cond)) ::kiln::fail(op, __VA_ARGS__); \
  } while (0)

// Debug-only check for internal invariants.
#ifdef NDEBUG
#define KILN_DCHECK(cond) ((void)0)
#else
#include <cassert>
#define KILN_DCHECK(cond) assert(cond)
#endif

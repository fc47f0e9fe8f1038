// One logging call and one progress line for all of kiln. Both write to stderr so stdout stays
// clean for machine-readable output (JSON lines, token ids).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "kiln/core/error.h"

namespace kiln {

enum class LogLevel { debug, info, warn, error };
void set_log_level(LogLevel level);
void log_line(LogLevel level, const std::string& msg);

template <typename... Args>
void log_info(Args&&... a) {
  log_line(LogLevel::info, str(std::forward<Args>(a)...));
}
template <typename... Args>
void log_warn(Args&&... a) {
  log_line(LogLevel::warn, str(std::forward<Args>(a)...));
}
template <typename... Args>
void log_debug(Args&&... a) {
  log_line(LogLevel::debug, str(std::forward<Args>(a)...));
}

// A progress line: "  label 120/1000 [12%] 3.4 it/s, ETA 4m18s | extra". On a terminal it
// redraws in place; otherwise it prints a line at most every `interval_s` seconds.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it", double interval_s = 5.0);
  // Reports that `done` units are finished, with an optional suffix (e.g. the loss).
  void update(int64_t done, const std::string& extra = "");
  // Prints the final line.
  void finish(const std::string& extra = "");
  double elapsed_s() const;

 private:
  void print(int64_t done, const std::string& extra, bool final);
  std::string label_, unit_;
  int64_t total_, start_done_ = -1;
  double interval_s_, last_print_ = -1e9;
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
};

std::string format_duration(double seconds);  // "4m18s"

}  // namespace kiln

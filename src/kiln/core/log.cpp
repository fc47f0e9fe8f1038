#include "kiln/core/log.h"

#include <unistd.h>

#include <cstdio>

namespace kiln {

namespace {
LogLevel g_level = LogLevel::info;
}

void set_log_level(LogLevel level) {
  g_level = level;
}

void log_line(LogLevel level, const std::string& msg) {
  if (level < g_level) return;
  static const char* tags[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "[kiln %s] %s\n", tags[int(level)], msg.c_str());
}

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  int64_t t = int64_t(s + 0.5);
  if (t < 60) return str(t, "s");
  if (t < 3600) return str(t / 60, "m", t % 60, "s");
  return str(t / 3600, "h", (t % 3600) / 60, "m");
}

Progress::Progress(std::string label, int64_t total, std::string unit, double interval_s)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      interval_s_(interval_s),
      tty_(isatty(STDERR_FILENO)),
      t0_(std::chrono::steady_clock::now()) {}

double Progress::elapsed_s() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
}

void Progress::update(int64_t done, const std::string& extra) {
  if (start_done_ < 0) start_done_ = done > 0 ? done - 1 : 0;
  double now = elapsed_s();
  if (now - last_print_ < (tty_ ? 0.2 : interval_s_) && done < total_) return;
  last_print_ = now;
  print(done, extra, false);
}

void Progress::finish(const std::string& extra) {
  print(total_, extra, true);
}

void Progress::print(int64_t done, const std::string& extra, bool final) {
  double t = elapsed_s();
  double rate = t > 0 ? double(done - std::max<int64_t>(start_done_, 0)) / t : 0;
  double eta = rate > 0 ? double(total_ - done) / rate : -1;
  char rate_buf[32];
  std::snprintf(rate_buf, sizeof rate_buf, "%.2f", rate);
  std::string line =
      str(label_, " ", done, "/", total_, " [", total_ ? 100 * done / total_ : 100, "%] ", rate_buf,
          " ", unit_, "/s, ", final ? "took " + format_duration(t) : "ETA " + format_duration(eta));
  if (!extra.empty()) line += " | " + extra;
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace kiln

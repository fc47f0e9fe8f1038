// Shared by the `kiln serve` tests: a tiny random-weight Llama saved as a model directory, the
// server started as a subprocess on a free port, and a raw HTTP/1.1 client (so tests can send
// bytes no well-behaved client would: malformed JSON, invalid UTF-8, dropped connections).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kiln/io/file.h"
#include "kiln/model/model_io.h"
#include "kiln/model/transformer.h"
#include "kiln/tokenizer/tokenizer.h"
#include "test_util.h"

namespace kiln::test {

// The tokenizer: 256 byte tokens + <|endoftext|> (id 256); the model's vocabulary is the first
// 128 of them, so whatever it samples is ASCII (texts compare exactly, no invalid UTF-8) and it
// never ends on eos by itself. initializer_range 0.5 makes logits peaked, so greedy picks never
// sit within rounding of a tie.
// `vocab` above 257 gives the model ids its tokenizer does not have (as padded vocabularies do).
inline void make_model_dir(const std::string& dir, int max_positions = 512, int vocab = 128) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.vocab_size = vocab;
  c.hidden = 32;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.intermediate = 48;
  c.max_positions = max_positions;
  c.initializer_range = 0.5f;
  c.eos_token_id = -1;
  Model m(c);
  m.init_weights(11);
  save_model(m, dir);
  Tokenizer::byte_level({"<|endoftext|>"}).save(dir + "/tokenizer.json");
}

struct HttpReply {
  int status = 0;                              // 0: no answer (connection failed or closed early)
  std::map<std::string, std::string> headers;  // names lower-case
  std::string body;                            // de-chunked
};

inline int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

inline void send_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += size_t(n);
  }
}

inline HttpReply parse_reply(const std::string& raw) {
  HttpReply r;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.compare(0, 9, "HTTP/1.1 ") != 0) return r;
  r.status = std::atoi(raw.c_str() + 9);
  std::istringstream head(raw.substr(0, end));
  std::string line;
  std::getline(head, line);
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon);
    for (char& ch : k) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    r.headers[k] = line.substr(line.find_first_not_of(' ', colon + 1));
  }
  std::string body = raw.substr(end + 4);
  if (r.headers["transfer-encoding"] == "chunked") {
    size_t p = 0;
    while (p < body.size()) {
      const size_t eol = body.find("\r\n", p);
      if (eol == std::string::npos) break;
      const size_t n = std::stoul(body.substr(p, eol - p), nullptr, 16);
      if (n == 0) break;
      r.body += body.substr(eol + 2, n);
      p = eol + 2 + n + 2;
    }
  } else {
    r.body = body;
  }
  return r;
}

// Sends `raw` as is and reads until the server closes (requests carry Connection: close).
inline HttpReply http_raw(int port, const std::string& raw) {
  int fd = connect_to(port);
  if (fd < 0) return {};
  send_all(fd, raw);
  std::string in;
  char buf[65536];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) in.append(buf, size_t(n));
  close(fd);
  return parse_reply(in);
}

inline std::string request_text(const std::string& method, const std::string& path,
                                const std::string& body = "",
                                const std::string& extra_headers = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST")
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + extra_headers + "\r\n" + body;
}

inline HttpReply http(int port, const std::string& method, const std::string& path,
                      const std::string& body = "", const std::string& extra_headers = "") {
  return http_raw(port, request_text(method, path, body, extra_headers));
}

// A request whose answer is read a piece at a time (a stream the test may drop mid-way).
class OpenRequest {
 public:
  OpenRequest(int port, const std::string& raw) : fd_(connect_to(port)) {
    if (fd_ >= 0) send_all(fd_, raw);
  }
  ~OpenRequest() { drop(); }
  // Reads until `needle` occurs `count` times in what came back (or the server closed).
  bool read_until(const std::string& needle, int count = 1) {
    while (occurrences(needle) < count) {
      char buf[4096];
      const ssize_t n = fd_ < 0 ? 0 : recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return false;
      in_.append(buf, size_t(n));
    }
    return true;
  }
  void read_all() {
    while (read_until("\x01never\x02")) {
    }
  }
  void drop() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  const std::string& received() const { return in_; }

 private:
  int occurrences(const std::string& needle) const {
    int n = 0;
    for (size_t p = in_.find(needle); p != std::string::npos; p = in_.find(needle, p + 1)) ++n;
    return n;
  }
  int fd_;
  std::string in_;
};

// The value of the first Prometheus sample line starting with `series` ("name{labels").
inline double metric(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series);
  if (at == std::string::npos) return -1;
  const size_t sp = text.find("} ", at);
  return std::atof(text.c_str() + sp + 2);
}

// `kiln serve` as a subprocess on a free port; stopped (SIGTERM, then waited for) on destruction.
class ServerProcess {
 public:
  ServerProcess(const std::string& model_dir, const std::string& args, const std::string& log) {
    log_ = log;
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a killed test
      const std::string cmd = "exec " + kiln_binary() + " serve --model " + model_dir +
                              " --port 0 " + args + " > " + log + " 2>&1";
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // The port is in the first log line; then /health says when the model is ready. Bounded
    // polling (a start-up wait, not an assertion).
    for (int i = 0; i < 3000 && port_ == 0 && alive(); ++i) {
      const std::string text = file_exists(log) ? read_file(log) : "";
      const size_t at = text.find("listening on http://127.0.0.1:");
      if (at != std::string::npos) port_ = std::atoi(text.c_str() + at + 30);
      if (port_ == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (int i = 0; i < 3000 && port_ != 0 && alive(); ++i) {
      if (http(port_, "GET", "/health").status == 200) {
        ready_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  ~ServerProcess() { stop(); }
  bool ready() const { return ready_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }  // the kiln process (sh execs it)
  std::string log() const { return file_exists(log_) ? read_file(log_) : ""; }
  bool alive() {
    if (exited_) return false;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return false;
    }
    return true;
  }
  // SIGTERM and wait; returns the exit status.
  int stop() {
    if (!exited_ && pid_ > 0) {
      kill(pid_, SIGTERM);
      int st = 0;
      waitpid(pid_, &st, 0);
      exited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return status_;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool ready_ = false, exited_ = false;
  int status_ = -1;
  std::string log_;
};

}  // namespace kiln::test

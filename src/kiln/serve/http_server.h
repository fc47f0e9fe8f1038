// A small event-driven HTTP/1.1 server (Boost.Beast/Asio, kept inside http_server.cpp): a fixed
// number of io threads serve every connection; each connection's work runs on its own strand.
// Requests are handed to one Handler, which answers through an Exchange now or later from any
// thread (whole responses, or chunked streams flushed per write). While a request is answered
// the connection keeps reading, so a client that goes away is noticed at once (on_disconnect).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::serve {

using Headers = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method, target, body, remote;
  Headers headers;                                  // names lower-case
  std::string header(std::string_view name) const;  // "" when absent
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  Headers headers;  // extra ones (Retry-After, ...)
};

// The reply channel of one request. Every method may be called from any thread: each is posted
// to the connection's strand. Calls after the exchange ended (or the client left) do nothing.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void respond(HttpResponse r) = 0;  // the whole response; ends the exchange
  // A chunked response whose chunks go out as they are written (Server-Sent Events).
  virtual void start_stream(int status, std::string content_type) = 0;
  virtual void write(std::string data) = 0;
  virtual void finish() = 0;                       // the last chunk; ends the exchange
  virtual void post(std::function<void()> f) = 0;  // runs f on the connection's strand
  // f runs on the strand if the client disconnects before the exchange ends.
  virtual void on_disconnect(std::function<void()> f) = 0;
  // Appended to the request's access-log line (ids, token counts).
  virtual void set_log_note(std::string note) = 0;
};

using Handler = std::function<void(HttpRequest& req, std::shared_ptr<Exchange> ex)>;
// Called once per finished exchange (the access log): status, seconds, bytes sent, note.
using DoneHook = std::function<void(const HttpRequest& req, int status, double seconds,
                                    size_t bytes, const std::string& note)>;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                          // 0 = any free port (see HttpServer::port())
  int threads = 2;                          // io threads
  size_t max_body_bytes = size_t(8) << 20;  // larger bodies get 413
};

class HttpServer {
 public:
  // Binds and listens; throws Error naming the address if it cannot.
  HttpServer(const HttpOptions& opts, Handler handler, DoneHook done);
  ~HttpServer();
  int port() const;
  // Runs the io threads until stop(); blocks the caller (which is one of them).
  void run();
  void stop_accepting();  // closes the listening socket; open connections go on
  void stop();            // ends run()
  // f runs on an io thread at SIGTERM or SIGINT.
  void on_signal(std::function<void(int)> f);
  // f runs on an io thread after `ms` milliseconds.
  void after(int ms, std::function<void()> f);

  struct Impl;  // http_server.cpp (its connections reach it)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::serve

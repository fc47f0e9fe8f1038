// The only file that includes Boost.Beast/Asio (they compile slowly; keep them here).
#include "kiln/serve/http_server.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <optional>
#include <thread>

#include "kiln/core/error.h"

namespace kiln::serve {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

std::string HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return v;
  return "";
}

struct HttpServer::Impl {
  HttpOptions opts;
  Handler handler;
  DoneHook done;
  net::io_context ioc;
  net::executor_work_guard<net::io_context::executor_type> work{ioc.get_executor()};
  tcp::acceptor acceptor{net::make_strand(ioc)};
  net::signal_set signals{ioc, SIGINT, SIGTERM};
  std::function<void(int)> on_signal;
  void do_accept();
};

namespace {

constexpr size_t kWatchBytes = 4096;       // read ahead while a request is answered
constexpr size_t kMaxReadAhead = 1 << 20;  // pipelined bytes held before we stop watching
constexpr auto kIdleTimeout = std::chrono::seconds(120);  // keep-alive connection, no request

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket sock, HttpServer::Impl& srv) : stream_(std::move(sock)), srv_(srv) {}
  void start() { do_read(); }

  // Runs f on the strand if exchange `gen` is still open.
  void run(uint64_t gen, std::function<void()> f) {
    net::post(stream_.get_executor(), [self = shared_from_this(), gen, f = std::move(f)] {
      if (self->gen_ == gen && self->active_ && !self->ended_ && !self->closed_) f();
    });
  }
  void post(std::function<void()> f) { net::post(stream_.get_executor(), std::move(f)); }

  void respond(HttpResponse r) {
    std::string head = "HTTP/1.1 " + std::to_string(r.status) + " " +
                       std::string(http::obsolete_reason(http::int_to_status(unsigned(r.status)))) +
                       "\r\nContent-Type: " + r.content_type +
                       "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n";
    for (const auto& [k, v] : r.headers) head += k + ": " + v + "\r\n";
    if (!keep_alive_) head += "Connection: close\r\n";
    status_ = r.status;
    ended_ = true;
    queue(head + "\r\n" + r.body);
  }
  void start_stream(int status, const std::string& content_type) {
    if (streaming_) return;
    streaming_ = true;
    status_ = status;
    std::string head = "HTTP/1.1 " + std::to_string(status) + " " +
                       std::string(http::obsolete_reason(http::int_to_status(unsigned(status)))) +
                       "\r\nContent-Type: " + content_type +
                       "\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
                       "X-Accel-Buffering: no\r\n";
    if (!keep_alive_) head += "Connection: close\r\n";
    queue(head + "\r\n");
  }
  void write(const std::string& data) {
    if (!streaming_ || data.empty()) return;  // an empty chunk would end the stream
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    queue(size + data + "\r\n");
  }
  void finish() {
    if (!streaming_) return;
    ended_ = true;
    queue("0\r\n\r\n");
  }
  void set_on_disconnect(std::function<void()> f) { on_disconnect_ = std::move(f); }
  void set_note(std::string n) { note_ = std::move(n); }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(srv_.opts.max_body_bytes);
    parser_->header_limit(64 * 1024);
    stream_.expires_after(kIdleTimeout);
    http::async_read(
        stream_, buf_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void begin_exchange() {
    ++gen_;
    active_ = true;
    ended_ = streaming_ = false;
    on_disconnect_ = nullptr;
    note_.clear();
    status_ = 0;
    bytes_ = 0;
    t0_ = SteadyClock::now();
    stream_.expires_never();
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == beast::error::timeout ||
        ec == net::error::operation_aborted)
      return close();
    req_ = HttpRequest{};
    beast::error_code rec;
    auto ep = stream_.socket().remote_endpoint(rec);
    if (!rec) req_.remote = ep.address().to_string() + ":" + std::to_string(ep.port());
    if (ec) {  // a request we cannot read: answer it, then close
      keep_alive_ = false;
      begin_exchange();
      const bool too_big = ec == http::error::body_limit;
      req_.method = "?";
      req_.target = "?";
      const std::string msg = too_big ? "the request body exceeds " +
                                            std::to_string(srv_.opts.max_body_bytes) + " bytes"
                                      : "malformed HTTP request: " + ec.message();
      respond({too_big ? 413 : 400,
               "application/json",
               "{\"error\":{\"message\":\"" + msg +
                   "\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}",
               {}});
      return;
    }
    auto& m = parser_->get();
    req_.method = std::string(m.method_string());
    req_.target = std::string(m.target());
    for (const auto& f : m) {
      std::string name(f.name_string());
      for (char& c : name) c = char(std::tolower(static_cast<unsigned char>(c)));
      req_.headers.push_back({std::move(name), std::string(f.value())});
    }
    req_.body = std::move(m.body());
    keep_alive_ = m.keep_alive();
    begin_exchange();
    watch();
    auto ex = make_exchange();
    try {
      srv_.handler(req_, ex);
    } catch (const std::exception& e) {
      if (!ended_)
        respond({500,
                 "application/json",
                 "{\"error\":{\"message\":\"internal error\",\"type\":\"internal_error\","
                 "\"param\":null,\"code\":null}}",
                 {}});
    }
  }

  std::shared_ptr<Exchange> make_exchange();

  // Reads while the request is answered: EOF or a reset means the client left.
  void watch() {
    if (watching_ || closed_) return;
    watching_ = true;
    stream_.async_read_some(
        buf_.prepare(kWatchBytes),
        [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_watch(ec, n); });
  }
  void on_watch(beast::error_code ec, size_t n) {
    watching_ = false;
    if (closed_) return;
    if (!ec) {
      buf_.commit(n);  // a pipelined request: kept for the next read
      if (active_ && buf_.size() < kMaxReadAhead) return watch();
      if (!active_) after_exchange();
      return;
    }
    if (ec == net::error::operation_aborted) {
      if (!active_) after_exchange();
      return;
    }
    client_gone();
  }

  void queue(std::string s) {
    if (closed_) return;
    bytes_ += s.size();
    out_.push_back(std::move(s));
    if (!writing_) do_write();
  }
  void do_write() {
    writing_ = true;
    net::async_write(
        stream_, net::buffer(out_.front()),
        [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
  }
  void on_write(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    if (ec) {
      out_.clear();
      return client_gone();
    }
    out_.pop_front();
    if (!out_.empty()) return do_write();
    if (active_ && ended_) end_exchange();
  }

  void end_exchange() {
    active_ = false;
    on_disconnect_ = nullptr;
    if (srv_.done)
      srv_.done(req_, status_, std::chrono::duration<double>(SteadyClock::now() - t0_).count(),
                bytes_, note_);
    if (watching_) {
      beast::error_code ec;
      stream_.socket().cancel(ec);  // on_watch continues with after_exchange()
    } else {
      after_exchange();
    }
  }
  void after_exchange() {
    if (keep_alive_) return do_read();
    // Lingering close: stop sending, read what the client still sends, then close.
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.expires_after(std::chrono::seconds(2));
    drain();
  }
  void drain() {
    stream_.async_read_some(net::buffer(scratch_),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec) return self->close();
                              self->drain();
                            });
  }

  void client_gone() {
    if (closed_) return;
    const bool mid = active_ && !ended_;
    auto f = std::move(on_disconnect_);
    on_disconnect_ = nullptr;
    if (active_) {
      active_ = false;
      if (srv_.done)
        srv_.done(req_, mid ? 499 : status_,
                  std::chrono::duration<double>(SteadyClock::now() - t0_).count(), bytes_,
                  note_ + (mid ? " client disconnected" : ""));
    }
    close();
    if (mid && f) f();
  }
  void close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& srv_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequest req_;
  uint64_t gen_ = 0;
  bool active_ = false, ended_ = false, streaming_ = false, keep_alive_ = true;
  bool closed_ = false, watching_ = false, writing_ = false;
  std::deque<std::string> out_;
  std::function<void()> on_disconnect_;
  std::string note_;
  int status_ = 0;
  size_t bytes_ = 0;
  SteadyClock::time_point t0_;
  char scratch_[1024];
};

class SessionExchange : public Exchange {
 public:
  SessionExchange(std::shared_ptr<Session> s, uint64_t gen) : s_(std::move(s)), gen_(gen) {}
  void respond(HttpResponse r) override {
    s_->run(gen_, [s = s_, r = std::move(r)]() mutable { s->respond(std::move(r)); });
  }
  void start_stream(int status, std::string ct) override {
    s_->run(gen_, [s = s_, status, ct = std::move(ct)] { s->start_stream(status, ct); });
  }
  void write(std::string data) override {
    s_->run(gen_, [s = s_, d = std::move(data)] { s->write(d); });
  }
  void finish() override {
    s_->run(gen_, [s = s_] { s->finish(); });
  }
  void post(std::function<void()> f) override { s_->post(std::move(f)); }
  void on_disconnect(std::function<void()> f) override {
    s_->run(gen_, [s = s_, f = std::move(f)]() mutable { s->set_on_disconnect(std::move(f)); });
  }
  void set_log_note(std::string note) override {
    s_->run(gen_, [s = s_, n = std::move(note)]() mutable { s->set_note(std::move(n)); });
  }

 private:
  std::shared_ptr<Session> s_;
  uint64_t gen_;
};

std::shared_ptr<Exchange> Session::make_exchange() {
  return std::make_shared<SessionExchange>(shared_from_this(), gen_);
}

}  // namespace

void HttpServer::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket sock) {
    if (!acceptor.is_open()) return;
    if (!ec) {
      sock.set_option(tcp::no_delay(true), ec);
      std::make_shared<Session>(std::move(sock), *this)->start();
    }
    do_accept();
  });
}

HttpServer::HttpServer(const HttpOptions& opts, Handler handler, DoneHook done)
    : impl_(std::make_unique<Impl>()) {
  impl_->opts = opts;
  impl_->handler = std::move(handler);
  impl_->done = std::move(done);
  beast::error_code ec;
  const auto addr = net::ip::make_address(opts.host, ec);
  KILN_CHECK(!ec, "serve", "--host '", opts.host, "' is not an IP address: ", ec.message());
  const tcp::endpoint ep(addr, static_cast<unsigned short>(opts.port));
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  KILN_CHECK(!ec, "serve", "cannot listen on ", opts.host, ":", opts.port, ": ", ec.message(),
             "; pick another --port or stop what uses it");
  impl_->do_accept();
}

HttpServer::~HttpServer() = default;

int HttpServer::port() const {
  return impl_->acceptor.local_endpoint().port();
}

void HttpServer::run() {
  std::vector<std::thread> threads;
  for (int i = 1; i < std::max(1, impl_->opts.threads); ++i)
    threads.emplace_back([this] { impl_->ioc.run(); });
  impl_->ioc.run();
  for (auto& t : threads) t.join();
}

void HttpServer::stop_accepting() {
  net::post(impl_->acceptor.get_executor(), [this] {
    beast::error_code ec;
    impl_->acceptor.close(ec);
  });
}

void HttpServer::stop() {
  impl_->work.reset();
  impl_->ioc.stop();
}

void HttpServer::on_signal(std::function<void(int)> f) {
  impl_->on_signal = std::move(f);
  struct Rearm {
    Impl* impl;
    void operator()(beast::error_code ec, int sig) const {
      if (ec) return;
      impl->on_signal(sig);
      impl->signals.async_wait(*this);
    }
  };
  impl_->signals.async_wait(Rearm{impl_.get()});
}

void HttpServer::after(int ms, std::function<void()> f) {
  auto t = std::make_shared<net::steady_timer>(impl_->ioc, std::chrono::milliseconds(ms));
  t->async_wait([t, f = std::move(f)](beast::error_code ec) {
    if (!ec) f();
  });
}

}  // namespace kiln::serve

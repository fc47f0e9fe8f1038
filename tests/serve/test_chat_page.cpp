// The web chat page `kiln serve` answers at `/` (src/kiln/serve/chat_page.cpp): one
// self-contained file whose script parses, and the page itself in headless Chromium driven by
// tests/serve/chat_page.mjs (streamed answer, system prompt and sampling controls, Stop cancelling
// the request on the server), which leaves a screenshot in the build directory.
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>

#include "serve_test_util.h"

namespace kiln {
namespace {

using test::http;
using test::HttpReply;

class ChatPage : public ::testing::Test {
 protected:
  // 65,536 positions, so the Stop case can ask for an answer far longer than the test lasts;
  // --max-running 2 keeps the automatic KV cache at two full contexts (32 MiB).
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("kiln-chat-page");
    test::make_model_dir(*dir_ / "tiny", 65536);
    server_ = new test::ServerProcess(*dir_ / "tiny", "--served-model-name tiny --max-running 2",
                                      *dir_ / "server.log");
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  static int port() { return server_->port(); }

  static test::TempDir* dir_;
  static test::ServerProcess* server_;
};
test::TempDir* ChatPage::dir_ = nullptr;
test::ServerProcess* ChatPage::server_ = nullptr;

// One self-contained file (no external resource) whose script parses; it streams the chat
// endpoint and has the controls and the stop button.
TEST_F(ChatPage, SelfContainedAndParses) {
  HttpReply r = http(port(), "GET", "/");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "text/html; charset=utf-8");
  EXPECT_EQ(r.body.find("http://"), std::string::npos) << "the page must not load anything";
  EXPECT_EQ(r.body.find("https://"), std::string::npos) << "the page must not load anything";
  for (const char* want :
       {"id=\"system\"", "id=\"temperature\"", "id=\"top_p\"", "id=\"max_tokens\"", "id=\"stop\"",
        "/v1/chat/completions", "stream: true", "controller.abort()"})
    EXPECT_NE(r.body.find(want), std::string::npos) << want;
  const size_t a = r.body.find("<script>"), b = r.body.find("</script>");
  ASSERT_TRUE(a != std::string::npos && b != std::string::npos);
  test::TempDir tmp("kiln-page");
  write_file_atomic(tmp / "page.js", r.body.substr(a + 8, b - a - 8));
  auto check = test::run_command("node --check " + (tmp / "page.js"));
  EXPECT_EQ(check.status, 0) << check.output;
}

// The page in headless Chromium: a streamed answer checked in the DOM, then Stop mid-stream.
// Chromium and puppeteer-core are part of the test setup, so their absence fails (as the OpenAI
// client's does in test_server.cpp) rather than skips.
TEST_F(ChatPage, InHeadlessChromium) {
  const std::string root = test::source_dir();
  const char* env = std::getenv("KILN_CHROMIUM");
  const std::string chromium = env ? env : "/usr/bin/chromium";
  if (!file_exists(chromium))
    FAIL() << "Chromium is not installed at " << chromium
           << ": run scripts/setup.sh (it installs Debian's chromium), or set KILN_CHROMIUM";
  if (!file_exists(root + "/data/serve_refs/node_modules/puppeteer-core/package.json"))
    FAIL() << "puppeteer-core is not installed: run scripts/fetch_serve_refs.sh "
              "(scripts/setup.sh does)";
  const std::string shot = test::build_dir() + "/chat_page.png";
  auto r = test::run_command("node " + root + "/tests/serve/chat_page.mjs http://127.0.0.1:" +
                             std::to_string(port()) + " " + shot);
  EXPECT_EQ(r.status, 0) << r.output << "\nthe server's log:\n" << server_->log();
  EXPECT_NE(r.output.find("ALL OK"), std::string::npos) << r.output;
  EXPECT_TRUE(file_exists(shot)) << shot;
  // Stop closed the connection; the server saw it (the script saw the running gauge fall to 0).
  EXPECT_NE(server_->log().find("client disconnected"), std::string::npos) << server_->log();
  std::cout << "[chat page] screenshot: " << shot << "\n";
}

}  // namespace
}  // namespace kiln

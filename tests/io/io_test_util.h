// Helpers shared by the io tests: a scratch directory, and checks on error messages.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "kiln/core/error.h"

namespace kiln::testing {

// A fresh directory for one test, removed with everything in it when the TempDir goes away.
struct TempDir {
  std::string path;

  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kiln_io_XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return path + "/" + name; }
  // Names of the entries in the directory, sorted: a leftover temp file shows up here.
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path)) {
      out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
  }
};

// Runs fn, expects a kiln::Error, and returns its message (empty, and a test failure, if none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected kiln::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected kiln::Error, nothing was thrown";
  return "";
}

// EXPECT_TRUE(has(msg, "truncated")) prints the whole message when the piece is missing.
inline ::testing::AssertionResult has(const std::string& text, const std::string& piece) {
  if (text.find(piece) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << piece << "' not found in: " << text;
}

}  // namespace kiln::testing

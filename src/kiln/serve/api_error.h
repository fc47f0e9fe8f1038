// The error a client of the OpenAI API sees: an HTTP status and OpenAI's error object
// {"error": {"message", "type", "param", "code"}}. Thrown by request parsing and checks, caught
// where the request is answered. Separate from kiln::Error because it carries the HTTP status
// and the offending field, which a library error does not know.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln::serve {

struct ApiError : std::runtime_error {
  int status;         // 400, 401, 404, 413, 429, 503, ...
  std::string type;   // "invalid_request_error", "authentication_error", ...
  std::string param;  // the request field at fault; "" = none (null)
  std::string code;   // OpenAI's machine-readable code; "" = none (null)
  ApiError(int status, std::string message, std::string param = "",
           std::string type = "invalid_request_error", std::string code = "")
      : std::runtime_error(std::move(message)),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
};

// The JSON body for an error (always valid UTF-8: invalid bytes in the message are replaced).
std::string error_body(const ApiError& e);
// A 400 naming `param`: "[param] message".
[[noreturn]] void bad_request(const std::string& param, const std::string& message);

}  // namespace kiln::serve

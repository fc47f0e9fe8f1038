// Overflow-safe integer arithmetic for sizes and offsets read from files: `ptr + len * w` with
// file-chosen values must not wrap around and pass a bounds check. Empty when the result does not
// fit T; use it as `auto end = checked_add(a, b); KILN_CHECK(end && *end <= size, ...)`.
#pragma once

#include <concepts>
#include <optional>

namespace kiln {

template <std::integral T>
[[nodiscard]] constexpr std::optional<T> checked_add(T a, T b) {
  T out;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

template <std::integral T>
[[nodiscard]] constexpr std::optional<T> checked_mul(T a, T b) {
  T out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

}  // namespace kiln

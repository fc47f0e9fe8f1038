#!/usr/bin/env bash
# Configures and builds kiln (Release) into build/. Extra arguments go to cmake's configure step.
#   scripts/build.sh [cmake args]               the `kiln` program and every test
#   scripts/build.sh --kiln-only [cmake args]   the `kiln` program alone (what the quickstart runs)
set -euo pipefail
cd "$(dirname "$0")/.."
targets=()
if [ "${1:-}" = "--kiln-only" ]; then
  shift
  set -- -DKILN_TESTS=OFF "$@"
  targets=(--target kiln_exe)
else
  set -- -DKILN_TESTS=ON "$@"
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)" "${targets[@]}"

#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` (and `llama-bench`, `llama-quantize`) from the llama.cpp source that npm
# node-llama-cpp ships as a git bundle, outside this repository, for bench/serve_bench.sh.
# Idempotent: clones once, configures once, and the build step is a no-op when up to date.
#   bench/build_llama_server.sh [--src DIR] [--build DIR] [--jobs N]
# Options off: tests, examples, the web UI (no download), TLS; LLAMA_CURL is a deprecated no-op in
# recent llama.cpp but kept for older sources. Defaults: $LLAMA_CPP_DIR or /work/llama.cpp-src, $LLAMA_CPP_BUILD or /work/llama.cpp-build,
# 2 jobs at nice 10 (the machine is shared). Prints the llama-server path last.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${LLAMA_CPP_DIR:-/work/llama.cpp-src} build=${LLAMA_CPP_BUILD:-/work/llama.cpp-build} jobs=2
while [ $# -gt 0 ]; do
  case $1 in --src) src=$2 ;; --build) build=$2 ;; --jobs) jobs=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift 2
done
bundle=data/llama_cpp/node_modules/node-llama-cpp/llama/gitRelease.bundle
[ -f "$bundle" ] || { echo "[build_llama_server] $bundle missing: run scripts/fetch_llama_cpp.sh" >&2; exit 1; }
case "$(realpath -m "$src")/" in "$(pwd -P)"/*)
  echo "[build_llama_server] $src is inside the repository; pick a folder outside it" >&2; exit 2 ;; esac

if [ ! -f "$src/CMakeLists.txt" ]; then
  echo "[build_llama_server] cloning $bundle into $src" >&2
  git -c advice.detachedHead=false clone --quiet "$bundle" "$src"
fi
echo "[build_llama_server] llama.cpp $(git -C "$src" describe --tags --always 2>/dev/null || git -C "$src" rev-parse --short HEAD)" >&2

if [ ! -f "$build/CMakeCache.txt" ]; then
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$src" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=ON >&2
fi
nice -n 10 cmake --build "$build" -j "$jobs" --target llama-server llama-bench llama-quantize >&2
bin=$build/bin/llama-server
[ -x "$bin" ] || { echo "[build_llama_server] $bin was not built" >&2; exit 1; }
echo "$bin"

#!/usr/bin/env bash
# Installs llama.cpp for the GGUF oracle test (tests/quant/test_gguf_llama_cpp.cpp) and the
# inference benchmark: npm `node-llama-cpp` with its prebuilt CPU binary `@node-llama-cpp/linux-x64`
# into data/llama_cpp (git-ignored). Nothing is downloaded or built at run time: the postinstall
# step is skipped (NODE_LLAMA_CPP_SKIP_DOWNLOAD) and the scripts load with build: "never".
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=data/llama_cpp
version=3.22.1
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/node-llama-cpp" ] || [ ! -d "$dir/node_modules/@node-llama-cpp/linux-x64" ]; then
  [ -f "$dir/package.json" ] || echo '{"name": "kiln-llama-cpp", "private": true}' > "$dir/package.json"
  (cd "$dir" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --silent --no-audit --no-fund \
     --omit=optional "node-llama-cpp@$version" "@node-llama-cpp/linux-x64@$version")
fi
echo "[llama.cpp] node-llama-cpp $version in $dir"

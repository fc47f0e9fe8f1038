#!/usr/bin/env bash
# Installs the official OpenAI client (npm openai@6; version 7 needs Node 22) that the serving
# tests (tests/serve) point at `kiln serve`, into data/serve_refs (git-ignored).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=data/serve_refs
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/openai" ]; then
  [ -f "$dir/package.json" ] || echo '{"name": "kiln-serve-refs", "private": true}' > "$dir/package.json"
  (cd "$dir" && npm install --silent --no-audit --no-fund openai@6)
fi
echo "[refs] OpenAI client in $dir"

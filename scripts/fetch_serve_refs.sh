#!/usr/bin/env bash
# Installs what the serving tests (tests/serve) drive `kiln serve` with, into data/serve_refs
# (git-ignored):
#   openai@6                 the official OpenAI client (version 7 needs Node 22)
#   puppeteer-core@24.43.1   a browser driver for the chat page test; it downloads no browser
#                            (the test runs Debian's chromium, which scripts/setup.sh installs),
#                            and 25 needs Node 22
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=data/serve_refs
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name": "kiln-serve-refs", "private": true}' > "$dir/package.json"
want=()
[ -d "$dir/node_modules/openai" ] || want+=(openai@6)
[ -d "$dir/node_modules/puppeteer-core" ] || want+=(puppeteer-core@24.43.1)
if [ ${#want[@]} -gt 0 ]; then
  # PUPPETEER_SKIP_DOWNLOAD: belt and braces, puppeteer-core has no download step of its own.
  (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --silent --no-audit --no-fund --save-exact "${want[@]}")
fi
echo "[refs] OpenAI client and puppeteer-core in $dir"

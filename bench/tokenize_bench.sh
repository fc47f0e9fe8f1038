#!/usr/bin/env bash
# `kiln data tokenize` throughput: Brown repeated to ~50 MB as JSONL (documents of 20 lines),
# a 32k BPE vocabulary trained on Brown, 1 and 2 threads. Reports MB/s of JSONL input and MB/s
# per core (target: >= 15 MB/s per core). The figure covers the whole command: reading, JSON
# parsing, encoding, writing the .bin/.idx with fsync. Prints a table; not a test.
#   bench/tokenize_bench.sh [BUILD_DIR]     (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=${1:-build}/kiln
[ -x "$kiln" ] || { echo "no $kiln: build first (cmake --build build --target kiln_exe)"; exit 1; }
mkdir -p bench/out
tok=bench/out/brown32k.json
[ -s "$tok" ] || "$kiln" tokenizer train --input data/brown.txt --vocab-size 32000 \
  --special '<|endoftext|>' --output "$tok" 2>/dev/null
jsonl=bench/out/brown50m.jsonl
[ -s "$jsonl" ] || python3 - data/brown.txt "$jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
docs = ["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    n, rep = 0, 0
    while n < 50_000_000:
        for d in docs:
            s = json.dumps({"text": d, "id": f"brown-{rep}-{n}"}) + "\n"
            f.write(s)
            n += len(s.encode())
        rep += 1
PY
mb=$(python3 -c "import os; print('%.1f' % (os.path.getsize('$jsonl') / 1e6))")
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
# Wall-clock MB/s, and MB per CPU-second (user + sys, from /usr/bin/time): the second is what a
# core does when it is not shared, so it stays meaningful on a busy machine.
printf '%-8s %10s %10s %15s %15s %12s\n' threads "input MB" "MB/s" "MB/s per core" "MB per CPU-s" tokens
for t in 1 2; do
  best=0 best_cpu=0 tokens=0
  for rep in 1 2 3; do
    out=$(/usr/bin/time -f 'cpu %U %S' -o bench/out/time.txt "$kiln" data tokenize \
      --input "$jsonl" --tokenizer "$tok" --output bench/out/brown50m --threads "$t" 2>/dev/null)
    r=$(echo "$out" | field mb_per_s)
    tokens=$(echo "$out" | field tokens)
    cpu=$(awk '/^cpu/ {print $2 + $3}' bench/out/time.txt)
    best=$(python3 -c "print(max($best, $r))")
    best_cpu=$(python3 -c "print(max($best_cpu, $mb / $cpu))")
  done
  printf '%-8s %10s %10.1f %15.1f %15.1f %12s\n' "$t" "$mb" "$best" \
    "$(python3 -c "print($best / $t)")" "$best_cpu" "$tokens"
done
echo "(best of 3; MB = 1e6 bytes of JSONL input; $(nproc) cores here, load average" \
  "$(cut -d' ' -f1 /proc/loadavg) when done)"

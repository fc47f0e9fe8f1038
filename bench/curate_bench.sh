#!/usr/bin/env bash
# Curation throughput: MB/s per core for `kiln data curate` with every step on, and for MinHash
# signatures alone (the fuzzy_dedup step only), on 1 and 2 threads. Input: ~80 MB of JSONL built
# from data/brown.txt (documents of 20-60 sentences, 10% exact copies, 10% with a few words
# changed, a few planted emails and phone numbers). Not a test; prints a table.
# Usage: bench/curate_bench.sh [BUILD_DIR] [MB]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
MB=${2:-80}
KILN="$BUILD/kiln"
WORK=$(mktemp -d /tmp/kiln-curate-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
[ -x "$KILN" ] || { echo "build kiln first: cmake --build $BUILD --target kiln_exe"; exit 1; }
[ -f data/brown.txt ] || { echo "data/brown.txt missing: run scripts/fetch_data.sh"; exit 1; }

python3 - "$WORK/in.jsonl" "$MB" <<'PY'
import json, random, sys
random.seed(0)
lines = [l for l in open("data/brown.txt").read().split("\n") if l.strip()]
target, size, n = int(sys.argv[2]) * 1_000_000, 0, 0
with open(sys.argv[1], "w") as out:
    prev = []
    while size < target:
        r = random.random()
        if r < 0.1 and prev:
            text = random.choice(prev)                       # exact copy
        elif r < 0.2 and prev:
            words = random.choice(prev).split(" ")           # near copy
            for _ in range(max(1, len(words) // 50)):
                words[random.randrange(len(words))] = random.choice(["alpha", "beta", "gamma"])
            text = " ".join(words)
        else:
            i = random.randrange(len(lines) - 60)
            k = random.randint(20, 60)
            text = "\n".join(lines[i:i + k])
            if random.random() < 0.05:
                text += "\nWrite to someone%d@example.org or call 555-%03d-%04d." % (n, n % 1000, n % 10000)
        prev = (prev + [text])[-200:]
        line = json.dumps({"id": n, "text": text}) + "\n"
        out.write(line)
        size += len(line)
        n += 1
PY
in_mb=$(python3 -c "import os; print(os.path.getsize('$WORK/in.jsonl') / 1e6)")
printf "input: %.1f MB of JSONL from data/brown.txt; machine: %s cores\n" "$in_mb" "$(nproc)"
printf "%-34s %8s %10s %14s %16s\n" "run" "threads" "MB/s" "MB/s per core" "MB per CPU-s"
run() {  # name threads args...
  local name=$1 threads=$2; shift 2
  # CPU seconds (user + system) as well as wall time: on a busy machine the wall-clock figure
  # per core drops with the load, MB per CPU-second much less.
  /usr/bin/time -f "%U %S" -o "$WORK/time" "$KILN" data curate -i "$WORK/in.jsonl" \
    -o "$WORK/out.jsonl" --report "$WORK/r.json" --threads "$threads" "$@" >/dev/null 2>&1
  python3 - "$WORK/r.json" "$name" "$threads" "$WORK/time" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = sum(float(x) for x in open(sys.argv[4]).read().split())
mbs = r["bytes_read"] / 1e6 / r["seconds"]
print("%-34s %8s %10.1f %14.1f %16.1f" % (sys.argv[2], sys.argv[3], mbs, mbs / int(sys.argv[3]),
                                         r["bytes_read"] / 1e6 / cpu))
PY
}
for t in 1 2; do run "curate, all steps" $t; done
for t in 1 2; do run "MinHash alone (--steps fuzzy_dedup)" $t --steps fuzzy_dedup; done
for t in 1 2; do run "read+write only (--steps normalize)" $t --steps normalize; done

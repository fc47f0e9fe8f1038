#!/usr/bin/env bash
# Did a change slow kiln down? Two kiln binaries (before and after) run the same training and
# inference benchmarks interleaved in one run (A B A B ...), so both see the same machine; prints
# the median of each and the ratio after/before. Raw JSON lines in bench/out/before_after.jsonl.
#   bench/before_after.sh BEFORE_KILN AFTER_KILN [--rounds 5] [--threads 2] [--more]
# --more adds the rounds to those already in the output (same binaries) instead of starting over.
# Build a before binary with e.g.:
#   git worktree add --detach /tmp/before <commit> && cmake -S /tmp/before -B /tmp/before/build \
#     -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_TESTS=OFF -DKILN_CUDA=OFF && \
#     cmake --build /tmp/before/build --target kiln_exe
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,9p "$0"; exit 2; }
before=$1 after=$2
shift 2
rounds=5 threads=2 more=0
while [ $# -gt 0 ]; do
  case $1 in --rounds) rounds=$2 ;; --threads) threads=$2 ;; --more) more=1; shift; continue ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift 2
done
export OMP_WAIT_POLICY=PASSIVE
mkdir -p bench/out
out=bench/out/before_after.jsonl
first=1
if [ $more = 1 ] && [ -s "$out" ]; then
  first=$(($(grep -o '"round":[0-9]*' "$out" | cut -d: -f2 | sort -n | tail -1) + 1))
else
  : >"$out"
fi
# Each case: a name and the arguments to `kiln bench`; every line of JSON it prints is tagged.
cases=(
  "train-fp32|train --model-config configs/models/llama-bench.json --batch 8 --seq 256 --steps 5 --precision fp32"
  "train-bf16|train --model-config configs/models/llama-bench.json --batch 8 --seq 256 --steps 5 --precision bf16"
  "infer-b1|infer --model-config configs/models/llama-100m.json --batch 1 --reps 3 --json"
  "infer-b16|infer --model-config configs/models/llama-100m.json --batch 16 --reps 3 --json"
)
for r in $(seq "$first" $((first + rounds - 1))); do
  for c in "${cases[@]}"; do
    name=${c%%|*} args=${c#*|}
    for side in before after; do
      bin=$before
      [ $side = after ] && bin=$after
      echo "[bench] round $r $name $side" >&2
      # shellcheck disable=SC2086
      "$bin" bench $args --threads "$threads" | grep '^{' |
        sed "s/^{/{\"case\":\"$name\",\"side\":\"$side\",\"round\":$r,/" >>"$out"
    done
  done
done
/usr/bin/python3 - "$out" "$before" "$after" "$threads" <<'PY'
import json, statistics, sys
path, before, after, threads = sys.argv[1:]
rows = [json.loads(l) for l in open(path)]
metrics = {"train": [("tokens_per_s", "tokens/s")],
           "infer": [("pp_tokens_per_s", "prefill tokens/s"), ("tg_tokens_per_s", "decode tokens/s")]}
print(f"before: {before}\nafter:  {after}\n{threads} threads; medians of {max(r['round'] for r in rows)} interleaved rounds")
print("| case | metric | before | after | after/before |")
print("|---|---|---:|---:|---:|")
for case in dict.fromkeys(r["case"] for r in rows):
    for key, label in metrics[case.split("-")[0]]:
        med = {s: statistics.median(r[key] for r in rows if r["case"] == case and r["side"] == s)
               for s in ("before", "after")}
        print(f"| {case} | {label} | {med['before']:,.1f} | {med['after']:,.1f} | "
              f"{med['after'] / med['before']:.3f} |")
PY

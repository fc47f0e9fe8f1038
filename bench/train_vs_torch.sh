#!/usr/bin/env bash
# Training throughput, kiln against PyTorch (Debian python3-torch on OpenBLAS), same model, batch
# and thread count, interleaved in one run so both see the same machine. Prints a table of
# medians and the ratio; raw JSON lines go to bench/out/train_vs_torch.jsonl.
#   bench/train_vs_torch.sh [CONFIG.json] [--rounds N] [--threads N] [--batch B] [--seq T] [--steps S]
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/models/llama-bench.json rounds=3 threads=$(nproc) batch=8 seq=256 steps=5
[ $# -gt 0 ] && [[ $1 != --* ]] && { config=$1; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2 ;; --threads) threads=$2 ;; --batch) batch=$2 ;;
    --seq) seq=$2 ;; --steps) steps=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p bench/out
out=bench/out/train_vs_torch.jsonl
: >"$out"
for r in $(seq "$rounds"); do
  echo "[bench] round $r/$rounds" >&2
  ./build/kiln bench train --model-config "$config" --batch "$batch" --seq "$seq" \
    --steps "$steps" --threads "$threads" >>"$out"
  OMP_NUM_THREADS=$threads /usr/bin/python3 bench/train_torch.py --model-config "$config" \
    --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" >>"$out"
done
/usr/bin/python3 - "$out" "$config" "$threads" "$batch" "$seq" <<'PY'
import json, statistics, sys
path, config, threads, batch, seq = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
by = {}
for r in rows:
    by.setdefault(r["impl"], []).append(r)
med = {k: (statistics.median(x["tokens_per_s"] for x in v), statistics.median(x["gflops"] for x in v), len(v))
       for k, v in by.items()}
print(f"model {config}, batch {batch}, seq {seq}, {threads} threads, fp32")
print(f"| impl | runs | tokens/s (median) | GFLOP/s (median) |")
print(f"|---|---|---|---|")
for k, (tps, gf, n) in med.items():
    print(f"| {k} | {n} | {tps:,.0f} | {gf:.1f} |")
if "kiln" in med and "pytorch" in med:
    print(f"\nkiln / PyTorch tokens/s: {med['kiln'][0] / med['pytorch'][0]:.2f}x")
PY

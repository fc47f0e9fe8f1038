#!/usr/bin/env bash
# Inference speed of the batched engine, llama-bench style: pp512 and tg128 tokens/s (mean ± sd
# over 5 runs) on the ~100M Llama config with random weights, fp32, at batch 1 and batch 16.
# Raw JSON lines go to bench/out/infer_bench.jsonl; the ratio batch16/batch1 decode is printed.
#   bench/infer_bench.sh [CONFIG.json] [--threads N] [--reps R] [--batches "1 16"]
# KILN=path/to/kiln overrides the binary (default build/kiln).
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/models/llama-100m.json threads=2 reps=5 batches="1 16"
kiln=${KILN:-./build/kiln}
[ $# -gt 0 ] && [[ $1 != --* ]] && { config=$1; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2 ;; --reps) reps=$2 ;; --batches) batches=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
export OMP_WAIT_POLICY=PASSIVE
mkdir -p bench/out
out=bench/out/infer_bench.jsonl
: >"$out"
for b in $batches; do
  echo "[bench] batch $b" >&2
  "$kiln" bench infer --model-config "$config" --threads "$threads" --batch "$b" --reps "$reps" \
    --json | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| batch | pp512 t/s | tg128 t/s (all sequences) |")
print("| ---: | ---: | ---: |")
for r in rows:
    print(f"| {r['batch']} | {r['pp_tokens_per_s']:.1f} ± {r['pp_sd']:.1f} | "
          f"{r['tg_tokens_per_s']:.1f} ± {r['tg_sd']:.1f} |")
one = [r for r in rows if r["batch"] == 1]
for r in rows:
    if one and r["batch"] > 1:
        print(f"batched decode {r['batch']} / single: "
              f"{r['tg_tokens_per_s'] / one[0]['tg_tokens_per_s']:.2f}x (target >= 6x)")
PY

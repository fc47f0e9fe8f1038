#!/usr/bin/env bash
# Training throughput, kiln against PyTorch (Debian python3-torch on OpenBLAS), same model, batch
# and thread count, interleaved in one run so both see the same machine. Prints a table of
# medians and the ratio; raw JSON lines go to bench/out/train_vs_torch.jsonl.
#   bench/train_vs_torch.sh [CONFIG.json] [--rounds N] [--threads N] [--batch B] [--seq T] [--steps S]
#                           [--precisions "fp32 bf16"] [--recompute "none full"] [--lora R]
#                           [--qlora]
# --lora R adds LoRA fine-tuning rows (the model frozen, r R, alpha 2R, every linear layer but the
# head: PEFT's all-linear) for both, beside full training: kiln bench train --lora, and the same
# adapter in plain PyTorch (bench/train_torch.py --lora); state MiB is kiln's state_bytes.
# --qlora (with --lora) adds kiln's QLoRA rows (the frozen projections in NF4; no fp16) and prints
# the NF4 bits per projection weight from kiln's log.
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/models/llama-bench.json rounds=3 threads=$(nproc) batch=8 seq=256 steps=5
precisions=fp32 recomputes=none lora=0 qlora=0
[ $# -gt 0 ] && [[ $1 != --* ]] && { config=$1; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --qlora) qlora=1; shift; continue ;;
    --rounds) rounds=$2 ;; --threads) threads=$2 ;; --batch) batch=$2 ;;
    --seq) seq=$2 ;; --steps) steps=$2 ;;
    --precisions) precisions=$2 ;; --recompute) recomputes=$2 ;; --lora) lora=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p bench/out
out=bench/out/train_vs_torch.jsonl
: >"$out"
for r in $(seq "$rounds"); do
  echo "[bench] round $r/$rounds" >&2
  for p in $precisions; do
    for rc in $recomputes; do
      ./build/kiln bench train --model-config "$config" --batch "$batch" --seq "$seq" \
        --steps "$steps" --threads "$threads" --precision "$p" --recompute "$rc" >>"$out"
    done
    if [ "$lora" -gt 0 ]; then
      ./build/kiln bench train --model-config "$config" --batch "$batch" --seq "$seq" \
        --steps "$steps" --threads "$threads" --precision "$p" --lora "$lora" >>"$out"
    fi
    if [ "$qlora" = 1 ] && [ "$p" != fp16 ]; then
      ./build/kiln bench train --model-config "$config" --batch "$batch" --seq "$seq" \
        --steps "$steps" --threads "$threads" --precision "$p" --lora "$lora" --qlora \
        >>"$out" 2>bench/out/train_vs_torch_qlora.log
    fi
    [ "$p" = fp16 ] && continue  # PyTorch's CPU autocast has no fp16
    OMP_NUM_THREADS=$threads /usr/bin/python3 bench/train_torch.py --model-config "$config" \
      --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" --precision "$p" >>"$out"
    if [ "$lora" -gt 0 ]; then
      OMP_NUM_THREADS=$threads /usr/bin/python3 bench/train_torch.py --model-config "$config" \
        --batch "$batch" --seq "$seq" --steps "$steps" --threads "$threads" --precision "$p" \
        --lora "$lora" >>"$out"
    fi
  done
done
[ "$qlora" = 1 ] && grep -o "the base's [0-9]* linear weights in NF4 ([0-9.]* bits each)" \
  bench/out/train_vs_torch_qlora.log | head -1
/usr/bin/python3 - "$out" "$config" "$threads" "$batch" "$seq" <<'PY'
import json, statistics, sys
path, config, threads, batch, seq = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
by = {}
for r in rows:
    key = (r["impl"], r.get("method", "full"), r.get("precision", "fp32"),
           r.get("recompute", "-") if r["impl"] == "kiln" else "-")
    by.setdefault(key, []).append(r)
med = {k: (statistics.median(x["tokens_per_s"] for x in v),
           statistics.median(x["gflops"] for x in v) if "gflops" in v[0] else None,
           max(x.get("peak_bytes", 0) for x in v), max(x.get("state_bytes", 0) for x in v), len(v))
       for k, v in by.items()}
base = med.get(("pytorch", "full", "fp32", "-"), (None,))[0]
kbase = med.get(("kiln", "full", "fp32", "none"), (None,))[0]
print(f"model {config}, batch {batch}, seq {seq}, {threads} threads")
print("| impl | method | precision | recompute | runs | tokens/s (median) | GFLOP/s | state+activation MiB | state MiB | vs PyTorch fp32 (same method) | vs kiln fp32 full |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (impl, method, prec, rc), (tps, gf, peak, state, n) in sorted(med.items()):
    peer = med.get(("pytorch", method, "fp32", "-"), (None,))[0]
    r1 = f"{tps / peer:.2f}x" if peer else "-"
    r2 = f"{tps / kbase:.2f}x" if kbase else "-"
    mib = f"{peak / 2**20:.0f}" if peak else "-"
    smib = f"{state / 2**20:.0f}" if state else "-"
    gfs = f"{gf:.1f}" if gf is not None else "-"
    print(f"| {impl} | {method} | {prec} | {rc} | {n} | {tps:,.0f} | {gfs} | {mib} | {smib} | {r1} | {r2} |")
PY

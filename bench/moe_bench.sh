#!/usr/bin/env bash
# Mixture-of-Experts benchmarks (issue 16), each side by side in one run on this machine:
#  1. training tokens/s of an 8-expert, top-2 Mixtral whose active size is the training
#     benchmark's dense Llama (configs/models/mixtral-bench.json vs llama-bench.json: each expert
#     half the dense MLP width), fp32 and bf16 (`kiln bench train`, 8 x 256 tokens per step);
#  2. per-rank training state at ep 2 against ep 1 on mixtral-bench (formula: the shared
#     parameters plus 1/ep of the experts, times 16 bytes; measured: `kiln train`'s state_bytes
#     under mpirun -np 2);
#  3. decode (tg128) and prefill (pp512) tokens/s against llama.cpp's llama-bench on the same q8_0
#     GGUF of an 8-expert model with llama-100m's active size (configs/models/mixtral-8x100m.json,
#     random weights) at the same threads, by bench/infer_vs_llama_bench.sh.
#   bench/moe_bench.sh [--threads N] [--steps N] [--reps N] [--skip-decode]
# Raw JSON in bench/out/moe_bench.jsonl; tables on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc) steps=10 reps=3 decode=1
while [ $# -gt 0 ]; do
  case $1 in --threads) threads=$2; shift 2 ;; --steps) steps=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;; --skip-decode) decode=0; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
done
out=bench/out; mkdir -p $out
jsonl=$out/moe_bench.jsonl; : > "$jsonl"
lscpu | grep -E "Model name" | sed 's/  */ /g' >&2
for p in fp32 bf16; do
  for m in llama-bench mixtral-bench; do
    echo "[moe_bench] train $m $p" >&2
    j=$(./build/kiln bench train --model-config configs/models/$m.json --precision $p \
        --steps "$steps" --threads "$threads" | tail -1)
    echo "{\"bench\":\"train\",\"model\":\"$m\",\"result\":$j}" >> "$jsonl"
  done
done

# Per-rank state at ep 1 and ep 2 (2 ranks, dp 2): two steps of the real trainer on mixtral-bench.
corpus=$out/moe_corpus.txt
[ -s "$corpus" ] || head -c 2000000 data/brown_train.txt > "$corpus"
yaml=$out/moe_state.yaml
{ echo "model: $(tr -d '\n' < configs/models/mixtral-bench.json)"
  echo "data: {train: [$corpus], val_fraction: 0.01, tokenizer: byte}"
  echo "train: {steps: 2, batch_size: 4, seq_len: 64, eval_every: 0, samples: 0, checkpoint_every: 0, final_checkpoint: false}"; } > "$yaml"
for ep in 1 2; do
  run=$out/moe-ep$ep; rm -rf "$run"
  mpirun --oversubscribe --allow-run-as-root --mca btl self,vader -np 2 ./build/kiln train \
    "$yaml" run_dir="$run" parallel.ep=$ep >/dev/null 2>&1
  sb=$(tail -1 "$run/metrics.jsonl" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['state_bytes'])")
  echo "{\"bench\":\"state\",\"ep\":$ep,\"state_bytes\":$sb}" >> "$jsonl"
done

/usr/bin/python3 - "$jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = {(r["model"], r["result"]["precision"]): r["result"] for r in rows if r["bench"] == "train"}
print("training, 8 x 256 tokens per step; tokens/s (median step)")
print("| precision | dense llama-bench | MoE mixtral-bench (8 experts, top-2) | MoE / dense |")
print("|---|---:|---:|---:|")
for p in ("fp32", "bf16"):
    d, m = train[("llama-bench", p)], train[("mixtral-bench", p)]
    print(f"| {p} | {d['tokens_per_s']:,.0f} | {m['tokens_per_s']:,.0f} | {m['tokens_per_s'] / d['tokens_per_s']:.2f}x |")
m = train[("mixtral-bench", "fp32")]
print(f"mixtral-bench: {m['params']:,} parameters, {m['active_params']:,} active per token")
st = {r["ep"]: r["state_bytes"] for r in rows if r["bench"] == "state"}
# mixtral-bench: 16 bytes (weights, gradients, AdamW m and v) per parameter held.
c = json.load(open("configs/models/mixtral-bench.json"))
C, F, L, E, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_local_experts"], c["vocab_size"]
H, K = c["num_attention_heads"], c["num_key_value_heads"]
D = C // H
shared = 2 * V * C + C + L * (2 * C + C * (H + 2 * K) * D + H * D * C + E * C)
experts = L * E * 3 * F * C
for ep in (1, 2):
    formula = 16 * (shared + experts // ep)
    print(f"ep {ep}: state_bytes {st[ep]:,} per rank; formula 16 x (shared {shared:,} + experts {experts:,} / {ep}) = {formula:,}")
PY

if [ "$decode" = 1 ]; then
  bash bench/infer_vs_llama_bench.sh --config configs/models/mixtral-8x100m.json \
    --threads "$threads" --reps "$reps" --types "q8_0" --batch 16
fi

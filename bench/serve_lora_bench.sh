#!/usr/bin/env bash
# Many LoRA adapters in one batch (issue 15): one `kiln serve` holding 4 adapters (r 16 on every
# linear layer), driven at a fixed concurrency by bench/serve_load.mjs twice per round: requests
# spread round-robin over the 4 adapters, and the same requests to the bare base. Output tokens/s
# of the first over the second is what serving adapters costs (target >= 0.8 at concurrency 16).
# The base: configs/models/llama-100m.json's shape with the byte tokenizer, one training step on
# Brown; each adapter one LoRA step (so B != 0) on records cut from Brown. Rows go to
# bench/out/serve_lora_bench.jsonl.
#   bench/serve_lora_bench.sh [--threads 2] [--concurrency 16] [--rounds 2] [--num-prompts 64]
#                             [--prompt-len 64:128] [--output-len 64:64] [--port 18200]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 conc=16 rounds=2 prompts=64 plen=64:128 olen=64:64 port=18200
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2 ;; --concurrency) conc=$2 ;; --rounds) rounds=$2 ;;
    --num-prompts) prompts=$2 ;; --prompt-len) plen=$2 ;; --output-len) olen=$2 ;;
    --port) port=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -s data/brown.txt ] || scripts/fetch_data.sh
w=bench/out/lora-serve
mkdir -p "$w"
if [ ! -d "$w/base/checkpoints" ]; then
  cat >"$w/base.yaml" <<YAML
run_dir: $w/base
seed: 1
model: {architectures: [LlamaForCausalLM], hidden_size: 768, intermediate_size: 2048,
        num_hidden_layers: 12, num_attention_heads: 12, num_key_value_heads: 4,
        max_position_embeddings: 1024}
data: {train: [data/brown.txt], tokenizer: byte}
train: {steps: 1, batch_size: 2, seq_len: 128, eval_every: 0, samples: 0, checkpoint_every: 0}
optim: {lr: 1.0e-3, warmup_steps: 0}
YAML
  ./build/kiln train "$w/base.yaml"
fi
python3 - "$w/sft.jsonl" <<'PY'
import json, sys
lines = [l.strip() for l in open("data/brown.txt") if len(l.strip()) > 80][:64]
with open(sys.argv[1], "w") as f:
    for l in lines:
        f.write(json.dumps({"prompt": l[:40], "completion": l[40:80]}) + "\n")
PY
loras=()
for i in 0 1 2 3; do
  if [ ! -d "$w/lora$i/checkpoints" ]; then
    cat >"$w/lora$i.yaml" <<YAML
run_dir: $w/lora$i
seed: $((i + 2))
method: lora
lora: {r: 16, alpha: 32, target_modules: all-linear}
model: {base: $w/base}
data: {sft: [$w/sft.jsonl], val_fraction: 0.1}
train: {steps: 1, batch_size: 2, seq_len: 64, eval_every: 0, samples: 0, checkpoint_every: 0}
optim: {lr: 1.0e-2, warmup_steps: 0}
YAML
    ./build/kiln finetune "$w/lora$i.yaml"
  fi
  loras+=(--lora "a$i=$w/lora$i")
done
out=bench/out/serve_lora_bench.jsonl
: >"$out"
OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=PASSIVE ./build/kiln serve --model "$w/base" \
  --served-model-name base --port "$port" --max-running "$conc" "${loras[@]}" \
  >"$w/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.5
done
for r in $(seq "$rounds"); do
  for models in base a0,a1,a2,a3; do
    echo "[bench] round $r/$rounds: $models" >&2
    node bench/serve_load.mjs --url "http://127.0.0.1:$port" --concurrency "$conc" \
      --num-prompts "$prompts" --prompt-len "$plen" --output-len "$olen" --model "$models" \
      --label "$models" >>"$out"
  done
done
python3 - "$out" "$conc" "$threads" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
tps = {}
for r in rows:
    tps.setdefault(r["label"], []).append(r["output_throughput"])
base, lora = statistics.median(tps["base"]), statistics.median(tps["a0,a1,a2,a3"])
print(f"concurrency {sys.argv[2]}, {sys.argv[3]} threads; output tokens/s, median of {len(tps['base'])} runs")
print("| requests | output tokens/s | vs base alone |")
print("|---|---:|---:|")
print(f"| base alone | {base:,.1f} | 1.00x |")
print(f"| 4 LoRA adapters (r 16, all linear), round-robin | {lora:,.1f} | {lora / base:.2f}x |")
PY

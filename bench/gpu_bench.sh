#!/usr/bin/env bash
# The CUDA backend's checks and benchmarks, on a machine with an NVIDIA GPU (issue #8):
#   1. the GPU tests (ctest -L cuda-gpu: every GPU op against its CPU reference; they skip
#      without a GPU, so this is where they really run), and a short training run on the GPU
#      against the same run on the CPU (loss curves);
#   2. GPT-2 124M training (B x 1024 tokens, bf16) in tokens/s and MFU: kiln vs PyTorch (the
#      machine's own, bf16 autocast, SDPA flash attention, fused AdamW; eager and torch.compile),
#      interleaved in rounds;
#   3. causal attention forward+backward TFLOP/s: kiln vs F.scaled_dot_product_attention;
#   4. decode tokens/s of a Llama ~1B config (configs/models/llama-1b.json) at batch 1 and 32.
# JSON lines go to bench/out/gpu/*.jsonl; a summary table goes to stdout.
#   bench/gpu_bench.sh [--rounds N] [--batch B] [--steps S] [--python PY] [--out DIR]
#                      [--no-tests] [--no-compile]
# On a GPU machine without kiln's build dependencies, scripts/gpu_carry.sh runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 batch=16 steps=20 py=python3 out=bench/out/gpu tests=1 compile=1
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2 ;; --batch) batch=$2 ;; --steps) steps=$2 ;; --python) py=$2 ;;
    --out) out=$2 ;;
    --no-tests) tests=0; shift; continue ;;
    --no-compile) compile=0; shift; continue ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
[ -x build/kiln ] || bash scripts/build.sh -DKILN_CUDA=ON
mkdir -p "$out"

echo "== 1. GPU tests" >&2
if [ $tests = 1 ]; then
  (cd build && ctest --output-on-failure -R '^(cuda|gpu)/') | tee "$out/ctest.txt"
fi
# Each measurement runs under a time limit and the script goes on past a failure, so one broken
# piece does not hide the others' figures.
try() { timeout "${KILN_BENCH_TIMEOUT:-240}" "$@" || echo "[bench] FAILED (rc $?): $*" >&2; }
try ./build/kiln bench train --model-config configs/models/gpt2-tiny.json --batch 4 --seq 64 \
  --steps 20 --warmup 0 --device cuda --precision fp32 --lr 1e-3 >"$out/tiny_gpu.jsonl"
try ./build/kiln bench train --model-config configs/models/gpt2-tiny.json --batch 4 --seq 64 \
  --steps 20 --warmup 0 --device cpu --accum 1 --precision fp32 --lr 1e-3 >"$out/tiny_cpu.jsonl"
try $py - "$out/tiny_gpu.jsonl" "$out/tiny_cpu.jsonl" <<'PY'
import json, sys
g, c = (json.loads(open(f).readline())["losses"] for f in sys.argv[1:3])
worst = max(abs(a - b) / abs(b) for a, b in zip(g, c))
print(f"GPU vs CPU loss curve (gpt2-tiny, fp32, 20 steps): max relative difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
PY

echo "== 2. GPT-2 124M training" >&2
: >"$out/train.jsonl"
for r in $(seq "$rounds"); do
  try ./build/kiln bench train --model-config configs/models/gpt2-124m.json --batch "$batch" \
    --seq 1024 --steps "$steps" --device cuda --precision bf16 >>"$out/train.jsonl"
  try $py bench/train_torch.py --device cuda --model-config configs/models/gpt2-124m.json \
    --batch "$batch" --seq 1024 --threads "$(nproc)" --steps "$steps" --precision bf16 >>"$out/train.jsonl"
  if [ $compile = 1 ]; then
    try $py bench/train_torch.py --device cuda --compile --model-config configs/models/gpt2-124m.json \
      --batch "$batch" --seq 1024 --threads "$(nproc)" --steps "$steps" --precision bf16 \
      >>"$out/train.jsonl"
  fi
done

echo "== 3. attention" >&2
: >"$out/attention.jsonl"
for shape in "--batch 8 --seq 2048 --heads 16 --kv-heads 16 --head-dim 128" \
             "--batch 4 --seq 4096 --heads 16 --kv-heads 16 --head-dim 128" \
             "--batch 8 --seq 2048 --heads 32 --kv-heads 32 --head-dim 64" \
             "--batch 8 --seq 2048 --heads 32 --kv-heads 4 --head-dim 64"; do
  # shellcheck disable=SC2086
  try ./build/kiln bench attention $shape >>"$out/attention.jsonl"
  # shellcheck disable=SC2086
  try $py bench/attention_torch.py $shape >>"$out/attention.jsonl"
done

echo "== 4. decode" >&2
: >"$out/decode.jsonl"
for b in 1 32; do
  try ./build/kiln bench infer --device cuda --model-config configs/models/llama-1b.json --batch "$b" \
    --pp 512 --tg 128 --reps 3 --json >>"$out/decode.jsonl"
done

$py - "$out" <<'PY'
import json, statistics, sys, collections
out = sys.argv[1]
def lines(name):  # the JSON lines a run wrote (a failed run writes none, or a partial one)
    try:
        for l in open(f"{out}/{name}"):
            try: yield json.loads(l)
            except ValueError: pass
    except OSError: pass
rows = list(lines("train.jsonl"))
groups = collections.defaultdict(list)
for r in rows:
    key = r["impl"] + (" compile" if r.get("compile") else "")
    groups[key].append(r)
print("| impl | tokens/s (median) | TFLOP/s | MFU |")
print("| --- | ---: | ---: | ---: |")
med = {}
for k, rs in groups.items():
    t = statistics.median(r["tokens_per_s"] for r in rs)
    med[k] = t
    print(f"| {k} | {t:.0f} | {statistics.median(r['tflops'] for r in rs):.1f} | "
          f"{statistics.median(r['mfu'] for r in rs):.3f} |")
torch = [v for k, v in med.items() if k.startswith("pytorch")]
if torch and "kiln" in med:
    print(f"kiln / best PyTorch tokens/s: {med['kiln'] / max(torch):.2f}x")
print()
print("| impl | shape | fwd TFLOP/s | fwd+bwd TFLOP/s |")
print("| --- | --- | ---: | ---: |")
for r in lines("attention.jsonl"):
    print(f"| {r['impl']} | B{r['batch']} T{r['seq']} H{r['heads']} K{r['kv_heads']} D{r['head_dim']} | "
          f"{r['fwd_tflops']:.1f} | {r['fwd_bwd_tflops']:.1f} |")
print()
for r in lines("decode.jsonl"):
    print(f"decode llama-1b batch {r['batch']}: {r['tg_tokens_per_s']:.0f} tokens/s "
          f"(prefill {r['pp_tokens_per_s']:.0f} tokens/s)")
PY

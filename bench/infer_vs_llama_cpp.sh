#!/usr/bin/env bash
# Inference speed, kiln against llama.cpp (npm node-llama-cpp, prebuilt CPU build) on the same
# GGUF files, same threads, in one run: pp512 and tg128 tokens/s for f32, q8_0 and q4_0 of a
# ~100M-parameter Llama (configs/models/llama-100m.json, weights after one training step: speed
# does not depend on their values). Prints a table; raw JSON in bench/out/infer_vs_llama_cpp.jsonl.
#   bench/infer_vs_llama_cpp.sh [--threads N] [--reps N] [--types "f32 q8_0 q4_0"]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc) reps=5 types="f32 q8_0 q4_0"
while [ $# -gt 0 ]; do
  case $1 in --threads) threads=$2 ;; --reps) reps=$2 ;; --types) types=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift 2
done
[ -d data/llama_cpp/node_modules/node-llama-cpp ] || { echo "run scripts/fetch_llama_cpp.sh"; exit 1; }
out=bench/out; mkdir -p $out
run=$out/llama100m
if [ ! -d "$run/checkpoints" ]; then
  { echo "run_dir: $run"; echo "model: $(tr -d '\n' < configs/models/llama-100m.json)"
    echo "data: {train: [data/brown_train.txt], val_fraction: 0.01, tokenizer: byte}"
    echo "train: {steps: 1, batch_size: 1, seq_len: 32, eval_every: 0, samples: 0}"; } > $out/llama100m.yaml
  ./build/kiln train $out/llama100m.yaml >/dev/null
fi
: > $out/infer_vs_llama_cpp.jsonl
for t in $types; do
  g=$out/llama100m-$t.gguf
  [ -s "$g" ] || ./build/kiln export --model "$run" --format gguf --type "$t" --output "$g" >/dev/null
  echo "[bench] $t" >&2
  k=$(./build/kiln bench infer --model "$g" --threads "$threads" --reps "$reps" --json)
  l=$(node bench/llama_cpp_bench.mjs "$g" "$threads" 512 128 "$reps")
  echo "{\"type\":\"$t\",\"kiln\":$k,\"llama_cpp\":$l}" >> $out/infer_vs_llama_cpp.jsonl
done
/usr/bin/python3 - "$out/infer_vs_llama_cpp.jsonl" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"llama-100m (124.7M params), {sys.argv[2]} threads; mean +- sd tokens/s")
print("| type | kiln pp512 | llama.cpp pp512 | ratio | kiln tg128 | llama.cpp tg128 | ratio |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    k, l = r["kiln"], r["llama_cpp"]
    print(f"| {r['type']} | {k['pp_tokens_per_s']:.1f} +- {k.get('pp_sd', 0):.1f} | {l['pp_tokens_per_s']:.1f} +- {l['pp_sd']:.1f} | "
          f"{k['pp_tokens_per_s'] / l['pp_tokens_per_s']:.2f}x | {k['tg_tokens_per_s']:.1f} +- {k.get('tg_sd', 0):.1f} | "
          f"{l['tg_tokens_per_s']:.1f} +- {l['tg_sd']:.1f} | {k['tg_tokens_per_s'] / l['tg_tokens_per_s']:.2f}x |")
PY

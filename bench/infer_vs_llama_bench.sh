#!/usr/bin/env bash
# Inference speed, kiln against llama.cpp's own llama-bench (built from the llama.cpp source npm
# node-llama-cpp ships, by bench/build_llama_server.sh), on the same GGUF files with the same
# threads, in one run: pp512 and tg128 tokens/s, and kiln's batched decode (tg128 with 16
# sequences). f32, q8_0 and q4_0 are kiln's own export of a random-weight model (`kiln export
# --model-config`: speed does not depend on the values); the K-quant mixes (q4_k_m, q6_k, ...) are made from
# that f32 file by llama.cpp's llama-quantize, as a user would make them.
#   bench/infer_vs_llama_bench.sh [--config configs/models/llama-100m.json] [--threads N]
#       [--reps N] [--types "f32 q8_0 q4_0 q4_k_m q6_k"] [--kiln BIN] [--batch 16]
# Prints the CPU, its ISA, the machine's measured read bandwidth and int8/fp32 peaks (kiln bench
# cpu) and a markdown table with kiln's share of them; raw JSON in
# bench/out/infer_vs_llama_bench.<config name>.jsonl. The 1B-class run:
#   bench/infer_vs_llama_bench.sh --config configs/models/llama-1b.json --threads 2 --reps 3
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/models/llama-100m.json threads=$(nproc) reps=5 batch=16 kiln=./build/kiln
types="f32 q8_0 q4_0 q4_k_m q6_k"
while [ $# -gt 0 ]; do
  case $1 in --config) config=$2 ;; --threads) threads=$2 ;; --reps) reps=$2 ;; --types) types=$2 ;;
    --kiln) kiln=$2 ;; --batch) batch=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift 2
done
build=${LLAMA_CPP_BUILD:-/work/llama.cpp-build}
bash bench/build_llama_server.sh --build "$build" >/dev/null
bin=$build/bin
name=$(basename "$config" .json)
out=bench/out; mkdir -p $out
gguf() {  # the file for type $1, made once
  local t=$1 g=$out/$name-$1.gguf
  if [ ! -s "$g" ]; then
    case $t in
      f32|f16|q8_0|q4_0) "$kiln" export --model-config "$config" --type "$t" --output "$g" >/dev/null ;;
      *) gguf f32 >/dev/null
         "$bin/llama-quantize" "$out/$name-f32.gguf" "$g" "${t^^}" "$threads" >/dev/null 2>&1 ;;
    esac
  fi
  echo "$g"
}
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
isa=$(grep -o -w -E 'avx2|avx512f|avx512_vnni|avx512_bf16|avx_vnni|amx_tile|amx_bf16|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')
jsonl=$out/infer_vs_llama_bench.$name.jsonl
: > "$jsonl"
# The machine's floors, measured once: memory read GB/s and the int8 / fp32 peaks (kiln bench cpu).
peaks=$("$kiln" bench cpu --threads "$threads" --json)
for t in $types; do
  g=$(gguf "$t")
  echo "[bench] $t" >&2
  k=$("$kiln" bench infer --model "$g" --threads "$threads" --reps "$reps" --json)
  kb=$("$kiln" bench infer --model "$g" --threads "$threads" --reps "$reps" --batch "$batch" --pp 16 --json)
  l=$("$bin/llama-bench" -m "$g" -p 512 -n 128 -r "$reps" -t "$threads" -o json 2>/dev/null)
  python3 - "$t" "$k" "$kb" "$l" "$(stat -c %s "$g")" >> "$jsonl" <<'PY'
import json, sys
t, k, kb, l = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
k["file_bytes"] = int(sys.argv[5])
pp = next(r for r in l if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r for r in l if r["n_gen"] > 0 and r["n_prompt"] == 0)
print(json.dumps({"type": t, "kiln": k, "kiln_batch": kb,
                  "llama_bench": {"pp_tokens_per_s": pp["avg_ts"], "pp_sd": pp["stddev_ts"],
                                  "tg_tokens_per_s": tg["avg_ts"], "tg_sd": tg["stddev_ts"],
                                  "build_commit": pp.get("build_commit", "")}}))
PY
done
python3 - "$jsonl" "$threads" "$cpu" "$isa" "$name" "$batch" "$peaks" "$config" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
threads, cpu, isa, name, batch = sys.argv[2:7]
peaks, cfg = json.loads(sys.argv[7]), json.load(open(sys.argv[8]))
k0 = rows[0]["kiln"]
# Matrix parameters (all but the embedding table, of which a token reads one row): 2 FLOP each
# per token, and the share of the file a decode step reads.
params = k0["params"]
matrix = params - cfg["vocab_size"] * cfg["hidden_size"]
top = max(peaks["int8_gops"], key=lambda t: peaks["int8_gops"][t])
print(f"{name} ({params / 1e6:.1f}M params), {threads} threads, {cpu} ({isa.strip()}); "
      f"llama.cpp {rows[0]['llama_bench']['build_commit']}; mean +- sd tokens/s")
print(f"Measured (kiln bench cpu): read {peaks['read_gbs']:.1f} GB/s, int8 {top} "
      f"{peaks['int8_gops'][top]:.0f} GOPS, fp32 FMA {peaks['fp32_gflops'][top]:.0f} GFLOP/s. "
      f"tg floor = read GB/s / (file bytes x {matrix / params:.3f}); pp peak share = "
      f"pp t/s x 2 x {matrix / 1e6:.1f}M / (int8 peak, or fp32 peak for f32/f16)")
print(f"| type | llama-bench pp512 | kiln pp512 | ratio | kiln pp % of peak "
      f"| llama-bench tg128 | kiln tg128 | ratio | kiln tg % of floor "
      f"| kiln tg128 x{batch} | x{batch} / x1 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    k, kb, l = r["kiln"], r["kiln_batch"], r["llama_bench"]
    peak = (peaks["fp32_gflops"][top] if r["type"] in ("f32", "f16") else peaks["int8_gops"][top])
    pp_share = k["pp_tokens_per_s"] * 2 * matrix / 1e9 / peak
    floor = peaks["read_gbs"] * 1e9 / (k["file_bytes"] * matrix / params)
    print(f"| {r['type']} | {l['pp_tokens_per_s']:.1f} +- {l['pp_sd']:.1f} "
          f"| {k['pp_tokens_per_s']:.1f} +- {k['pp_sd']:.1f} "
          f"| **{k['pp_tokens_per_s'] / l['pp_tokens_per_s']:.2f}x** | {100 * pp_share:.0f}% "
          f"| {l['tg_tokens_per_s']:.1f} +- {l['tg_sd']:.1f} "
          f"| {k['tg_tokens_per_s']:.1f} +- {k['tg_sd']:.1f} "
          f"| **{k['tg_tokens_per_s'] / l['tg_tokens_per_s']:.2f}x** "
          f"| {100 * k['tg_tokens_per_s'] / floor:.0f}% of {floor:.0f} "
          f"| {kb['tg_tokens_per_s']:.1f} | {kb['tg_tokens_per_s'] / k['tg_tokens_per_s']:.2f}x |")
PY

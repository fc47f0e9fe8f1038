#!/usr/bin/env bash
# Serving benchmark (issue 14): `kiln serve` against llama.cpp's `llama-server` on the same
# ~100M-parameter Llama q8_0 GGUF, same threads, driven by the same load generator
# (bench/serve_load.mjs) through the same /v1/completions endpoint, streamed. Points: a closed
# loop at each concurrency (llama-server gets that many slots), Poisson arrivals at each rate,
# and 1,000 concurrent short streams for kiln alone. Each point starts a fresh server, runs the
# load, scrapes /metrics and the server's CPU time, stops it, and appends one JSON row to
# bench/out/serve_bench.jsonl. Resumable: a point whose row is already there (same server, point
# and load settings) is skipped, so an interrupted run continues where it stopped (--fresh
# starts over). Prints a markdown table (bench/serve_table.py) at the end.
#
#   bench/serve_bench.sh [--threads 2] [--concurrency "1 16 64 256"] [--rates "0.25 0.5 1 2"]
#     [--servers "kiln llama-server"] [--waves 4] [--min-prompts 32] [--rate-prompts 64]
#     [--prompt-len 64:512] [--output-len 32:256] [--seed 0] [--slot-ctx 1024]
#     [--streams 1000] [--streams-prompt-len 16:64] [--streams-output-len 16:16]
#     [--streams-max-running 1000] [--kv-gib 4] [--port 18100] [--omp-wait-policy PASSIVE]
#     [--out FILE] [--fresh] [--dry-run]
# --dry-run lists the points (and whether each is done already) without running anything.
#
# The model: configs/models/llama-100m.json (124.7M parameters) after one training step, with a
# 32,000-token byte-level BPE trained on Brown (so every id the model can emit is a token both
# servers can print; the byte tokenizer of bench/infer_vs_llama_cpp.sh covers only 257 ids), then
# `kiln export --format gguf --type q8_0`. Prompts are Brown text of prompt-len tokens (cut at
# --bytes-per-token bytes per token, measured for this tokenizer; the servers' usage gives the
# exact count), outputs exactly output-len tokens (ignore_eos), greedy.
# Number of prompts: closed loop max(min-prompts, waves x concurrency); Poisson rate-prompts.
# KV capacity, equal for both: slot-ctx positions per concurrent request (llama-server
# -c concurrency x slot-ctx, one slot each; kiln --kv-blocks concurrency x slot-ctx / 16, capped
# at --kv-gib since kiln keeps K/V in fp32: 384 KiB per 16-position block for this model).
# OMP_WAIT_POLICY (both servers use OpenMP; PASSIVE by default, as bench/infer_bench.sh: idle
# workers sleep instead of spinning against the HTTP threads and the load generator; "" leaves
# it unset). llama-server: LLAMA_SERVER=path, else bench/build_llama_server.sh builds it.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 concs="1 16 64 256" rates="0.25 0.5 1 2" servers="kiln llama-server"
waves=4 min_prompts=32 rate_prompts=64 plen=64:512 olen=32:256 seed=0 slot_ctx=1024
bpt=4.73 streams=1000 s_plen=16:64 s_olen=16:16 s_running=1000 kv_gib=4 port=18100
omp_wait=PASSIVE out=bench/out/serve_bench.jsonl fresh=0 dry=0
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2 ;; --concurrency) concs=$2 ;; --rates) rates=$2 ;;
    --servers) servers=$2 ;; --waves) waves=$2 ;; --min-prompts) min_prompts=$2 ;;
    --rate-prompts) rate_prompts=$2 ;; --prompt-len) plen=$2 ;; --output-len) olen=$2 ;;
    --seed) seed=$2 ;; --slot-ctx) slot_ctx=$2 ;; --bytes-per-token) bpt=$2 ;;
    --streams) streams=$2 ;; --streams-prompt-len) s_plen=$2 ;; --streams-output-len) s_olen=$2 ;;
    --streams-max-running) s_running=$2 ;; --kv-gib) kv_gib=$2 ;; --port) port=$2 ;;
    --omp-wait-policy) omp_wait=$2 ;; --out) out=$2 ;; --fresh) fresh=1; shift; continue ;;
    --dry-run) dry=1; shift; continue ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -x build/kiln ] || { echo "[serve_bench] build kiln first (build/kiln)" >&2; exit 1; }
[ -f data/brown.txt ] || { echo "[serve_bench] data/brown.txt missing" >&2; exit 1; }
if [ -n "$omp_wait" ]; then export OMP_WAIT_POLICY=$omp_wait; else unset OMP_WAIT_POLICY; fi
mkdir -p bench/out/serve_logs
[ "$fresh" = 1 ] && [ "$dry" = 0 ] && : > "$out"
touch "$out"

# --- the model -------------------------------------------------------------------------------
tok=bench/out/brown-bpe32000.json run=bench/out/llama100m-bpe G=bench/out/llama100m-bpe-q8_0.gguf
if [ "$dry" = 0 ]; then
  [ -s "$tok" ] || ./build/kiln tokenizer train --input data/brown_train.txt --vocab-size 32000 \
    --pattern gpt2 --special '<|endoftext|>' --output "$tok" >&2
  if [ ! -d "$run/checkpoints" ]; then
    { echo "run_dir: $run"; echo "model: $(tr -d '\n' < configs/models/llama-100m.json)"
      echo "data: {train: [data/brown_train.txt], val_fraction: 0.01, tokenizer: $tok}"
      echo "train: {steps: 1, batch_size: 1, seq_len: 32, eval_every: 0, samples: 0}"; } > bench/out/llama100m-bpe.yaml
    ./build/kiln train bench/out/llama100m-bpe.yaml >/dev/null
  fi
  [ -s "$G" ] || ./build/kiln export --model "$run" --format gguf --type q8_0 --output "$G" >/dev/null
fi

llama_bin=${LLAMA_SERVER:-}
if [[ " $servers " == *" llama-server "* ]] && [ -z "$llama_bin" ] && [ "$dry" = 0 ]; then
  llama_bin=$(bench/build_llama_server.sh | tail -1)
fi
llama_rev=""
[ -n "$llama_bin" ] && llama_rev=$("$llama_bin" --version 2>&1 | grep -m1 -o 'version: .*' || true)

# --- one point -------------------------------------------------------------------------------
# Appends "server point" key checks and rows through python (JSON in, JSON out).
have_row() {  # server point loadargs
  python3 - "$out" "$1" "$2" "$3" <<'PY'
import json, sys
f, server, point, args = sys.argv[1:]
for l in open(f):
    try: r = json.loads(l)
    except ValueError: continue
    if r.get("server") == server and r.get("point") == point and r.get("load_args") == args:
        sys.exit(0)
sys.exit(1)
PY
}

cpu_seconds() {  # pid -> utime+stime in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

srv_pid=""
stop_server() {
  [ -n "$srv_pid" ] || return 0
  kill -TERM "$srv_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$srv_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$srv_pid" 2>/dev/null || true
  wait "$srv_pid" 2>/dev/null || true
  srv_pid=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# server point n_concurrent(for sizing) max_running loadargs...
run_point() {
  local server=$1 point=$2 size=$3 running=$4; shift 4
  local loadargs="$*"
  if have_row "$server" "$point" "$loadargs"; then
    echo "[serve_bench] $server $point: done already (in $out)" >&2; return 0
  fi
  [ "$dry" = 1 ] && { echo "[serve_bench] would run $server $point: $loadargs" >&2; return 0; }
  local log=bench/out/serve_logs/$server-$point.log ctx=$slot_ctx
  [ "$point" = streams$streams ] && ctx=$(( (${s_plen#*:} * 13 / 10) + ${s_olen#*:} + 16 ))
  local sargs
  if [ "$server" = kiln ]; then
    local blocks=$(( size * ((ctx + 15) / 16) + 1 ))
    local cap=$(( kv_gib * 1024 * 1024 / 384 ))
    [ "$blocks" -gt "$cap" ] && blocks=$cap
    local budget=$(( running > 512 ? running : 512 ))
    sargs="--model $G --threads $threads --port $port --max-running $running --token-budget $budget --kv-blocks $blocks --max-queue $(( size * 2 + 64 ))"
    ./build/kiln serve $sargs > "$log" 2>&1 &
  else
    sargs="-m $G -t $threads -tb $threads --port $port --parallel $size -c $(( size * ctx )) --no-webui --metrics --fit off"
    "$llama_bin" $sargs > "$log" 2>&1 &
  fi
  srv_pid=$!
  local url=http://127.0.0.1:$port
  local up=0
  for _ in $(seq 600); do
    curl -sf "$url/health" >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$srv_pid" 2>/dev/null || { echo "[serve_bench] $server died at start; see $log" >&2; tail -5 "$log" >&2; srv_pid=""; return 1; }
    sleep 0.5
  done
  [ "$up" = 1 ] || { echo "[serve_bench] $server not healthy after 300 s; see $log" >&2; stop_server; return 1; }
  echo "[serve_bench] $server $point: $loadargs" >&2
  # One short request first (model pages, thread pools), outside the point and its metrics.
  curl -sf "$url/v1/completions" -H 'content-type: application/json' \
    -d '{"prompt": "The Fulton County Grand Jury said", "max_tokens": 8, "ignore_eos": true}' >/dev/null || {
    echo "[serve_bench] $server $point: the warm-up request failed; see $log" >&2; stop_server; return 1; }
  curl -s "$url/metrics" > bench/out/serve_logs/$server-$point.metrics0 || true
  local cpu0 load cpu1
  cpu0=$(cpu_seconds "$srv_pid")
  export SERVE_LOADAVG0; SERVE_LOADAVG0=$(cat /proc/loadavg)
  load=$(node bench/serve_load.mjs --url "$url" --label "$server $point" --seed "$seed" \
    --bytes-per-token "$bpt" --warmup 0 --requests-out "bench/out/serve_logs/$server-$point.requests.jsonl" $loadargs) || {
    echo "[serve_bench] $server $point: the load generator failed; see $log" >&2; stop_server; return 1; }
  cpu1=$(cpu_seconds "$srv_pid")
  curl -s "$url/metrics" > bench/out/serve_logs/$server-$point.metrics1 || true
  stop_server
  python3 bench/serve_metrics.py --row "$server" "$point" "$loadargs" "OMP_WAIT_POLICY=${omp_wait} $sargs" "$threads" \
    "$(python3 -c "print(round($cpu1 - $cpu0, 3))")" "$llama_rev" \
    bench/out/serve_logs/$server-$point.metrics0 bench/out/serve_logs/$server-$point.metrics1 \
    <<< "$load" >> "$out"
}

# A failed point is reported and skipped (no row: a rerun retries it); the others still run.
failed=""
point() { run_point "$@" || failed="$failed $1:$2"; }
common="--prompt-len $plen --output-len $olen"
for c in $concs; do
  n=$(( waves * c > min_prompts ? waves * c : min_prompts ))
  for s in $servers; do point "$s" "c$c" "$c" "$c" --concurrency "$c" --num-prompts "$n" $common; done
done
maxc=$(for c in $concs; do echo "$c"; done | sort -n | tail -1)
for r in $rates; do
  for s in $servers; do
    point "$s" "r$r" "${maxc:-64}" "${maxc:-64}" --rate "$r" --num-prompts "$rate_prompts" $common
  done
done
if [ "$streams" -gt 0 ] && [[ " $servers " == *" kiln "* ]]; then
  point kiln "streams$streams" "$streams" "$s_running" --concurrency "$streams" \
    --num-prompts "$streams" --prompt-len "$s_plen" --output-len "$s_olen" --timeout 3600
fi
[ "$dry" = 1 ] || [ ! -s "$out" ] || python3 bench/serve_table.py "$out"
[ -z "$failed" ] || { echo "[serve_bench] failed points (rerun to retry):$failed" >&2; exit 1; }

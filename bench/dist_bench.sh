#!/usr/bin/env bash
# Distributed training on CPU over MPI: the real trainer (`kiln bench train` with a layout, on mock
# data) at 1 rank and at N ranks (mpirun --oversubscribe, --threads 1 per rank) for ZeRO 0-3,
# tensor parallelism (tp = N, where implemented), pipelines of 2 and N stages, and dp=2 against
# dp=1 at the same per-rank batch (overlapped bucketed all-reduce, and one bucket after backward).
# Every layout of a global batch is checked against one process's losses. Prints a Markdown table:
# state bytes per rank (and the ratio to 1 rank), bytes sent per step (measured by the trainer and
# predicted by the formulas below), step time; raw JSON lines go to bench/out/dist_bench.jsonl.
#   bench/dist_bench.sh [CONFIG.json] [--ranks N] [--batch G] [--micro M] [--seq T] [--steps S]
#
# Per-step bytes sent by one rank (the largest over ranks), fp32 (4 bytes), P parameters, N = dp,
# M micro-batches per step, ring collectives (dist/comm.h):
#   ZeRO-0: all-reduce of the gradients after the last micro-batch  2(N-1)/N * 4P
#   ZeRO-1: the same all-reduce, then each rank updates its 1/N of the weights and they are
#           all-gathered                                            2(N-1)/N * 4P + (N-1)/N * 4P
#   ZeRO-2: reduce-scatter of every micro-batch's gradients into the shards, then the all-gather
#           of the updated weights                                  M (N-1)/N * 4P + (N-1)/N * 4P
#   ZeRO-3: per micro-batch each layer's weights are all-gathered for its forward and again for
#           its backward, and its gradients reduce-scattered; the embedding (whose backward reads
#           no weights) and an untied LM head (whose backward runs with its forward) are gathered
#           once, so with E = 2VC untied, 0 tied                    M (N-1)/N * 4(3P - E)
#   pipeline of S stages x dp N: per micro-batch a stage sends its (B/N, T, C) activation forward
#           (all but the last) and its input gradient backward (all but the first), so a middle
#           stage sends 2M * (B/N) T C * 4, an end stage half that; plus the dp all-reduce of its
#           stage's gradients 2(N-1)/N * 4 P_s (P_s ~ P/S)
#   (+ a few scalar all-reduces: the loss, the clipping norm; + chunk padding to a multiple of N)
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/models/llama-bench.json ranks=4 batch=16 micro=8 seq=256 steps=5 warmup=2 seed=1
[ $# -gt 0 ] && [[ $1 != --* ]] && { config=$1; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --ranks) ranks=$2 ;; --batch) batch=$2 ;; --micro) micro=$2 ;; --seq) seq=$2 ;;
    --steps) steps=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
mkdir -p bench/out
out=bench/out/dist_bench.jsonl log=bench/out/dist_bench.log
: >"$out"
: >"$log"
mpi=(mpirun --oversubscribe --allow-run-as-root --mca btl self,vader)
# Pipelines stream M micro-batches of batch/M sequences (the same global batch per step).
pbatch=$((batch / micro))

# run NAME RANKS FLAGS...: one JSON line tagged with the layout's name; a layout the trainer
# refuses as not implemented is recorded as such.
run() {
  local name=$1 np=$2 line
  shift 2
  local cmd=(./build/kiln bench train --model-config "$config" --seq "$seq" --steps "$steps"
             --warmup "$warmup" --seed "$seed" --threads 1 "$@")
  [ "$np" -gt 1 ] && cmd=("${mpi[@]}" -np "$np" "${cmd[@]}")
  echo "[bench] $name: ${cmd[*]}" | tee -a "$log" >&2
  if line=$("${cmd[@]}" 2>>"$log" | grep '^{'); then
    echo "{\"layout\":\"$name\",${line#\{}" >>"$out"
  elif tail -n 20 "$log" | grep -q "not implemented"; then
    echo "{\"layout\":\"$name\",\"ranks\":$np,\"missing\":\"not implemented yet\"}" >>"$out"
  else
    echo "[bench] $name failed; see $log" >&2
    exit 1
  fi
}

n=$ranks
run "1 rank" 1 --batch "$batch" --zero 0
run "1 rank, $micro micro-batches" 1 --batch "$pbatch" --accum "$micro" --zero 0
for z in 0 1 2 3; do run "dp $n, ZeRO-$z" "$n" --batch "$batch" --zero "$z"; done
run "tp $n" "$n" --batch "$batch" --tp "$n"
run "tp $n, sequence parallel" "$n" --batch "$batch" --tp "$n" --sp
run "tp 2 x pp 2, 1F1B" "$n" --batch "$pbatch" --accum "$micro" --tp 2 --pp 2
run "pp 2 x dp $((n / 2)), 1F1B" "$n" --batch "$pbatch" --accum "$micro" --pp 2
run "pp $n, 1F1B" "$n" --batch "$pbatch" --accum "$micro" --pp "$n"
run "pp $n, GPipe" "$n" --batch "$pbatch" --accum "$micro" --pp "$n" --schedule gpipe
# The overlap: per-rank batch batch/4 at dp 1 and dp 2; then dp 2 with one bucket (1e6 MB), whose
# all-reduce can only start after the whole backward.
q=$((batch / 4))
run "dp 1, batch $q" 1 --batch "$q" --zero 0
run "dp 2, batch $((2 * q))" 2 --batch "$((2 * q))" --zero 0
run "dp 2, batch $((2 * q)), one bucket" 2 --batch "$((2 * q))" --zero 0 --bucket-mb 1e6

/usr/bin/python3 - "$out" "$config" <<'PY'
import json, sys
path, config = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
mc = json.load(open(config))
C = mc.get("hidden_size", mc.get("n_embd"))
V = mc["vocab_size"]
E = 0 if mc.get("tie_word_embeddings", mc.get("n_embd") is not None) else 2 * V * C
ran = [r for r in rows if "missing" not in r]
# One process at the same batch and micro-batches: the reference state and losses.
def reference(r):
    for b in ran:
        if b["ranks"] == 1 and b["batch"] == r["batch"] and b["accum"] == r["accum"]:
            return b
def predicted(r):
    P, N, M, S = r["params"], r["dp"], r["accum"], r["pp"]
    f = (N - 1) / N
    if r["ranks"] == 1:
        return 0, "0"
    Tp, L = r["tp"], mc.get("num_hidden_layers", mc.get("n_layer"))
    tp_f = (Tp - 1) / Tp
    # Tensor parallel, per micro-batch: 4 all-reduces of the (B/N, T, C) activations per layer
    # (attention and MLP outputs forward, their inputs' gradients backward), the embedding's and
    # the final norm gradient's (one each on the first and last stage of a pipeline: the last
    # stage, which sends the most, has the second), and the vocabulary-parallel loss's 3 per-row
    # scalars. Sequence parallelism swaps each all-reduce for a reduce-scatter + all-gather: the
    # same bytes.
    rows_tp = (r["batch"] // N) * r["seq"]
    k = 4 * L // S + (2 if S == 1 else 1)
    tp_bytes = 0 if Tp == 1 else M * 2 * tp_f * 4 * rows_tp * (k * C + 3)
    tp_formula = "" if Tp == 1 else f" + M·{k}·2(T-1)/T·(B/N)TC·4"
    if S > 1:
        act = M * (r["batch"] // N) * r["seq"] * C * 4
        ends = 2 if S > 2 else 1
        return (ends * act + 2 * f * 4 * P / S + tp_bytes,
                f"{ends}M(B/N)TC·4 + 2(N-1)/N·4P/S" + tp_formula)
    if Tp > 1:
        return 2 * f * 4 * P + tp_bytes, ("2(N-1)/N·4P" if N > 1 else "0") + tp_formula
    z = r["zero"]
    if z == 0: return 2 * f * 4 * P, "2(N-1)/N·4P"
    if z == 1: return 2 * f * 4 * P, "2(N-1)/N·4P"
    if z == 2: return (M + 1) * f * 4 * P, "(M+1)(N-1)/N·4P"
    return M * f * 4 * (3 * P - E), "M(N-1)/N·4(3P-E)"
base = next((r for r in ran if r["layout"] == "1 rank"), None)
if base:
    print(f"model {config}: {base['params']:,} parameters, seq {base['seq']}, global batch "
          f"{base['batch'] * base['accum']} sequences per step, fp32, 1 thread per rank")
print("| layout | ranks | dp x tp x pp | ZeRO | state MiB/rank | vs 1 rank | sent MB/step "
      "(measured) | predicted | formula | step ms | tokens/s | losses vs 1 rank |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "missing" in r:
        print(f"| {r['layout']} | {r['ranks']} | {r['missing']} |" + " |" * 9)
        continue
    ref = reference(r)
    ratio = f"{r['state_bytes'] / base['state_bytes']:.2f}x" if base else "-"
    pred, formula = predicted(r)
    if ref is not None and ref is not r:
        d = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"]))
        match = f"max rel diff {d:.1e}"
    else:
        match = "(reference)" if ref is r else "-"
    print(f"| {r['layout']} | {r['ranks']} | {r['dp']} x {r['tp']} x {r['pp']} | {r['zero']} | "
          f"{r['state_bytes'] / 2**20:.1f} | {ratio} | {r['comm_bytes'] / 1e6:.2f} | "
          f"{pred / 1e6:.2f} | {formula} | {r['step_ms_median']:.0f} | "
          f"{r['tokens_per_s']:,.0f} | {match} |")
PY

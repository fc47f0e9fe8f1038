#!/usr/bin/env bash
# kiln's K-quant writer against llama.cpp's own llama-quantize (built from the llama.cpp source npm
# node-llama-cpp ships, by bench/build_llama_server.sh). For each model and each type: kiln
# exports the model to an f32 GGUF, llama-quantize turns that file into TYPE, and kiln writes TYPE
# itself (`kiln export --type TYPE` and `kiln quantize --type TYPE`); then every tensor's type and
# data bytes, every metadata key, value and their order, and the whole files are compared.
# Models (random weights after one training step): configs/models/llama-bench.json (rows of 256,
# ffn 704: ffn_down falls back to a 32-value type), configs/models/llama-tiny.json (rows of 64
# and 176: every K type falls back, ffn_down to f16) and a 16-layer grouped-query (4:1) model with
# tied embeddings (use_more_bits layers, q2_k's attn_v, token_embd as the output).
#   bench/kquant_vs_llama_quantize.sh [--types "q4_k_m q5_k_m q6_k ..."] [--kiln BIN]
#       [--configs "configs/models/llama-100m.json ..."]  (instead of the three models above)
# Prints one line per (model, type): IDENTICAL, or what differs; exits 1 if anything differs.
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=./build/kiln
types="q4_k_m q5_k_m q6_k q3_k_m q2_k q4_k_s q5_k_s q3_k_s q3_k_l q8_0 q4_0"
out=bench/out/kquant
configs="configs/models/llama-bench.json configs/models/llama-tiny.json $out/kquant-16l.json"
while [ $# -gt 0 ]; do
  case $1 in --types) types=$2 ;; --kiln) kiln=$2 ;; --configs) configs=$2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;; esac
  shift 2
done
build=${LLAMA_CPP_BUILD:-/work/llama.cpp-build}
quantize=$build/bin/llama-quantize
[ -x "$quantize" ] || bash bench/build_llama_server.sh --build "$build" >/dev/null
mkdir -p $out
cat > $out/kquant-16l.json <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
 "intermediate_size": 768, "num_hidden_layers": 16, "num_attention_heads": 8,
 "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
 "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu",
 "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}
EOF
status=0
for config in $configs; do
  name=$(basename "$config" .json) run=$out/$name
  if [ ! -d "$run/checkpoints" ]; then
    { echo "run_dir: $run"; echo "model: $(tr -d '\n' < "$config")"
      echo "data: {train: [data/brown_train.txt], val_fraction: 0.01, tokenizer: byte}"
      echo "train: {steps: 1, batch_size: 1, seq_len: 32, eval_every: 0, samples: 0}"; } > $out/$name.yaml
    "$kiln" train $out/$name.yaml >/dev/null
  fi
  f32=$out/$name-f32.gguf
  "$kiln" export --model "$run" --format gguf --type f32 --output "$f32" >/dev/null
  for t in $types; do
    ref=$out/$name-$t-llama.gguf mine=$out/$name-$t-kiln.gguf dir=$out/$name-$t-kiln
    "$quantize" "$f32" "$ref" "${t^^}" "$(nproc)" >$out/$name-$t-llama.log 2>&1 ||
      { echo "llama-quantize failed: $out/$name-$t-llama.log" >&2; exit 1; }
    "$kiln" export --model "$run" --format gguf --type "$t" --output "$mine" >/dev/null
    rm -rf "$dir"; "$kiln" quantize --model "$run" --type "$t" --output "$dir" >/dev/null
    python3 - "$name" "$t" "$ref" "$mine" "$dir/model.gguf" <<'PY' || status=1
import struct, sys

def read_gguf(path):
    b = open(path, "rb").read()
    pos = 0
    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos); pos += struct.calcsize("<" + fmt)
        return v[0]
    def string():
        nonlocal pos
        n = take("Q"); s = b[pos:pos + n]; pos += n
        return s.decode("utf-8", "replace")
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def value(t):
        if t == 8: return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return (et, [value(et) for _ in range(n)])
        return take(scalars[t])
    assert b[:4] == b"GGUF", path
    pos = 4
    take("I"); nt, nkv = take("Q"), take("Q")
    kv = []
    for _ in range(nkv):
        k = string(); t = take("I"); kv.append((k, t, value(t)))
    infos = []
    for _ in range(nt):
        name = string(); nd = take("I"); dims = [take("Q") for _ in range(nd)]
        infos.append((name, dims, take("I"), take("Q")))
    align = next((v for k, t, v in kv if k == "general.alignment"), 32)
    start = (pos + align - 1) // align * align
    ends = sorted(o for _, _, _, o in infos)[1:] + [len(b) - start]
    tensors = {}
    for name, dims, ty, off in infos:
        end = min(e for e in ends if e > off) if any(e > off for e in ends) else len(b) - start
        tensors[name] = (dims, ty, b[start + off:start + end])
    return b, kv, infos, tensors

GGML = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 10: "q2_K",
        11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K"}
name, t, ref_path = sys.argv[1:4]
rb, rkv, rinfo, rt = read_gguf(ref_path)
ok = True
for label, path in (("export", sys.argv[4]), ("quantize", sys.argv[5])):
    kb, kkv, kinfo, kt = read_gguf(path)
    diffs = []
    if set(rt) != set(kt):
        diffs.append(f"tensor names differ: only llama {sorted(set(rt) - set(kt))}, only kiln {sorted(set(kt) - set(rt))}")
    types, data = 0, 0
    for n in sorted(set(rt) & set(kt)):
        (rd, rty, rbytes), (kd, kty, kbytes) = rt[n], kt[n]
        # compare only the tensor's own bytes (padding excluded)
        if rd != kd: diffs.append(f"{n}: dims {rd} vs {kd}")
        if rty != kty:
            types += 1; diffs.append(f"{n}: type {GGML.get(rty, rty)} (llama) vs {GGML.get(kty, kty)} (kiln)")
        elif rbytes.rstrip(b"\0") != kbytes.rstrip(b"\0"):
            data += 1; diffs.append(f"{n}: {GGML.get(rty, rty)} data differs")
    if [n for n, *_ in rinfo] != [n for n, *_ in kinfo]: diffs.append("tensor order differs")
    if [k for k, *_ in rkv] != [k for k, *_ in kkv]:
        diffs.append(f"metadata keys/order differ: llama {[k for k, *_ in rkv]} kiln {[k for k, *_ in kkv]}")
    else:
        for (k, a, x), (_, c, y) in zip(rkv, kkv):
            if (a, x) != (c, y): diffs.append(f"metadata {k}: {a}:{str(x)[:60]} vs {c}:{str(y)[:60]}")
    same_file = rb == kb
    summary = ", ".join(f"{sum(1 for _, ty, _ in rt.values() if ty == g)} {GGML[g]}"
                        for g in sorted(GGML) if any(ty == g for _, ty, _ in rt.values()))
    if same_file:
        print(f"{name} {t} kiln {label}: IDENTICAL file ({len(rb)} bytes; tensors: {summary})")
    else:
        ok = False
        print(f"{name} {t} kiln {label}: DIFFERS ({len(diffs)} findings; tensors: {summary})")
        for d in diffs[:20]: print("   ", d)
        if not diffs: print("    no tensor or metadata difference found; bytes differ elsewhere (header/padding)")
sys.exit(0 if ok else 1)
PY
  done
done
exit $status

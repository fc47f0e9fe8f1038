#!/usr/bin/env bash
# The quickstart: installs what is missing (only what it needs: no PyTorch, test packages or
# reference tokenizers), builds the `kiln` program alone (no tests; the CUDA backend only where a
# GPU is), curates and tokenizes the Brown corpus and nlp-corpus, trains a small Llama on this
# machine's CPU, plots its loss curves, evaluates it on held-out Brown text, and talks to it.
# About 10 minutes on 2 cores from a fresh clone (README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh --quickstart
bash scripts/build.sh --kiln-only
echo "[quickstart] install and build: $(($(date +%s) - start)) s"
run=runs/quickstart
# A 4096-token byte-level BPE vocabulary trained on the training text (about a second).
[ -s data/brown-bpe4096.json ] || ./build/kiln tokenizer train --input data/brown_train.txt \
  --vocab-size 4096 --special '<|endoftext|>' --output data/brown-bpe4096.json
# Curate the raw documents (quality filters, dedup, PII) and tokenize them into data/quickstart.
./build/kiln data curate --input data/brown_docs.jsonl data/nlp_docs.jsonl --output data/clean.jsonl
./build/kiln data tokenize --input data/clean.jsonl --tokenizer data/brown-bpe4096.json \
  --output data/quickstart
./build/kiln train configs/quickstart.yaml "$@"
./build/kiln plot "$run" --output "$run/curves.svg"
echo
echo "== held-out evaluation (data/brown_val.txt) =="
./build/kiln eval --model "$run" --text data/brown_val.txt
echo
echo "== generation =="
./build/kiln generate --model "$run" --prompt "The jury said" --max-new-tokens 200 \
  --temperature 0.8 --top-k 40 --seed 1
echo
echo "Loss curves: $run/curves.svg   Checkpoint: $(ls -d $run/checkpoints/step_* | tail -1)"
echo "[quickstart] total: $(($(date +%s) - start)) s"

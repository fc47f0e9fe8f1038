#!/usr/bin/env bash
# The quickstart: installs what is missing, builds, curates and tokenizes the Brown corpus and
# nlp-corpus, trains a small Llama on this machine's CPU, plots its loss curves, evaluates it on
# held-out Brown text, and talks to it. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
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

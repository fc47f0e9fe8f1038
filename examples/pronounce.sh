#!/usr/bin/env bash
# Fine-tuning that measurably learns: English pronunciation (CMU Pronouncing Dictionary as chat
# records, scripts/fetch_data.sh) on top of the quickstart's model. Fine-tunes it
# (configs/finetune.yaml) and scores greedy answers on the 5% of words held out by hash:
# exact match and phoneme error rate, for the base model, full fine-tuning (one example per row,
# and packed: several per row), LoRA (r 8, 64) and QLoRA (r 8, NF4 base, bf16).
#   examples/pronounce.sh [BASE_RUN]   (default runs/quickstart: run scripts/quickstart.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-runs/quickstart}
[ -d "$base" ] || { echo "no $base: run scripts/quickstart.sh first (or give a run directory)"; exit 1; }
[ -s data/pronounce_test.jsonl ] || bash scripts/fetch_data.sh
./build/kiln finetune configs/finetune.yaml model.base="$base" run_dir=runs/pronounce
./build/kiln finetune configs/finetune.yaml model.base="$base" run_dir=runs/pronounce-packed \
  data.packing=true
# LoRA on every linear layer at ranks 8 and 64 (alpha 2r), at a learning rate suited to adapters.
for r in 8 64; do
  ./build/kiln finetune configs/finetune.yaml model.base="$base" run_dir=runs/pronounce-lora$r \
    method=lora lora.r=$r lora.alpha=$((2 * r)) lora.target_modules=all-linear optim.lr=${LORA_LR:-5e-3}
done
./build/kiln finetune configs/finetune.yaml model.base="$base" run_dir=runs/pronounce-qlora8 \
  method=qlora train.precision=bf16 lora.r=8 lora.alpha=16 lora.target_modules=all-linear \
  optim.lr=${LORA_LR:-5e-3}
# QLoRA's adapter is scored over the base it trained on: the NF4 base (bitsandbytes' format).
[ -d "$base-nf4" ] || ./build/kiln quantize --model "$base" --type nf4 --output "$base-nf4"
echo "| model | held-out words | exact match | phoneme error rate |"
echo "|---|---:|---:|---:|"
for m in "$base" runs/pronounce runs/pronounce-packed runs/pronounce-lora8 runs/pronounce-lora64 \
  runs/pronounce-qlora8; do
  case $m in
    *qlora*) args="--model $base-nf4 --adapter $m" ;;
    *lora*) args="--model $base --adapter $m" ;;
    *) args="--model $m" ;;
  esac
  ./build/kiln eval $args --sft data/pronounce_test.jsonl --max-new-tokens 32 2>/dev/null |
    python3 -c "import json,sys; r=json.load(sys.stdin); print(f'| $m | {r[\"examples\"]} | {100*r[\"exact_match\"]:.1f}% | {100*r[\"word_error_rate\"]:.1f}% |')"
done

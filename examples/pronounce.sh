#!/usr/bin/env bash
# Fine-tuning that measurably learns: English pronunciation (CMU Pronouncing Dictionary as chat
# records, scripts/fetch_data.sh) on top of the quickstart's model. Fine-tunes it
# (configs/finetune.yaml) and scores greedy answers on the 5% of words held out by hash:
# exact match and phoneme error rate, for the base model and the fine-tuned one.
#   examples/pronounce.sh [BASE_RUN]   (default runs/quickstart: run scripts/quickstart.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-runs/quickstart}
[ -d "$base" ] || { echo "no $base: run scripts/quickstart.sh first (or give a run directory)"; exit 1; }
[ -s data/pronounce_test.jsonl ] || bash scripts/fetch_data.sh
./build/kiln finetune configs/finetune.yaml model.base="$base" run_dir=runs/pronounce
echo "| model | held-out words | exact match | phoneme error rate |"
echo "|---|---:|---:|---:|"
for m in "$base" runs/pronounce; do
  ./build/kiln eval --model "$m" --sft data/pronounce_test.jsonl --max-new-tokens 32 2>/dev/null |
    python3 -c "import json,sys; r=json.load(sys.stdin); print(f'| $m | {r[\"examples\"]} | {100*r[\"exact_match\"]:.1f}% | {100*r[\"word_error_rate\"]:.1f}% |')"
done

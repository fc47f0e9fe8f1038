#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages, corpora, reference tokenizers),
# builds, and runs the whole suite with ctest. Works on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Where the CUDA toolkit is installed, the test build compiles the CUDA backend even without a
# GPU (-DKILN_CUDA=ON; the default AUTO wants a GPU too), so a change that breaks a kernel's
# compile fails here; the GPU tests then report skipped. Without a toolkit (CI) nothing changes.
cuda=()
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=(-DKILN_CUDA=ON); fi
bash scripts/build.sh "${cuda[@]}"
cd build
ctest --output-on-failure -j"$(nproc)" "$@"

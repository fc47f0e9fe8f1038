#!/usr/bin/env bash
# Runs kiln's GPU tests and benchmarks on a machine that has an NVIDIA GPU but none of the Debian
# -dev packages kiln builds against (a lent GPU machine: CUDA toolkit, PyTorch, no apt).
#
#   here:  scripts/gpu_carry.sh pack      builds with CUDA for sm_90 (build-gpu/) and packs into
#                                         .gpu/carry.tar.xz the program, the GPU test programs and
#                                         every shared library they need beyond glibc, libstdc++
#                                         and the CUDA libraries (about 25 MB)
#   there: scripts/gpu_carry.sh run [tests|bench|all] [bench options]
#                                         unpacks, puts a wrapper at build/kiln, runs each GPU test
#                                         program as ctest would (KILN_SOURCE_DIR, KILN_BINARY) and
#                                         then bench/gpu_bench.sh; logs and JSON go to $OUT (or
#                                         bench/out/gpu)
#
# A library found on the GPU machine under the same soname is taken from there (same soname, same
# ABI); the carried copy is used only where the machine has none. CUDA's own libraries (cudart,
# cuBLAS(Lt), NCCL) are looked up on the machine: the toolkit's lib64, else PyTorch's wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-}
shift || true

pack() {
  local build=build-gpu
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
  local tests=()
  for src in tests/cuda/test_*.cpp tests/gpu/test_*.cpp; do
    local dir; dir=$(basename "$(dirname "$src")")
    tests+=("${dir}_$(basename "$src" .cpp)")
  done
  cmake --build "$build" -j"$(nproc)" --target kiln_exe "${tests[@]}"
  local stage; stage=$(mktemp -d)
  mkdir -p "$stage/bin" "$stage/tests" "$stage/lib"
  strip -o "$stage/bin/kiln" "$build/kiln"
  for t in "${tests[@]}"; do strip -o "$stage/tests/$t" "$build/tests/$t"; done
  # Every non-glibc, non-libstdc++, non-CUDA library the programs load.
  local skip='^(linux-vdso|libc\.so|libm\.so|libpthread|libdl|librt|ld-linux|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnccl)'
  for f in "$stage"/bin/* "$stage"/tests/*; do ldd "$f"; done | awk '$3 ~ /^\// {print $1, $3}' |
    sort -u | while read -r name path; do
      [[ $name =~ $skip ]] || cp -L "$path" "$stage/lib/$name"
    done
  cp -L /usr/local/cuda/lib64/libcudart.so.13 "$stage/lib/" 2>/dev/null || true
  mkdir -p .gpu
  tar -C "$stage" -cf - . | xz -T"$(nproc)" -6 >.gpu/carry.tar.xz
  rm -rf "$stage"
  echo "[gpu_carry] .gpu/carry.tar.xz: $(du -h .gpu/carry.tar.xz | cut -f1)" \
    "(${#tests[@]} test programs); run there: scripts/gpu_carry.sh run all, carry .gpu"
}

# First directory under the given roots holding a file named $1.
find_lib_dir() {
  local name=$1; shift
  local f; f=$(find "$@" -name "$name" -print -quit 2>/dev/null || true)
  [ -n "$f" ] && dirname "$f"
}

unpack() {
  local carry=$root/.gpu/carried
  rm -rf "$carry" && mkdir -p "$carry"
  tar -C "$carry" -xJf .gpu/carry.tar.xz
  # Prefer the machine's own copy of each library (same soname).
  for f in "$carry"/lib/*; do
    ldconfig -p | grep -q "^[[:space:]]*$(basename "$f") " && rm -f "$f"
  done
  local libdirs=$carry/lib
  for name in libcublasLt.so.13 libnccl.so.2 libcudart.so.13; do
    ldconfig -p | grep -q "$name" && continue
    local d; d=$(find_lib_dir "$name" /usr/local/cuda*/lib64 /usr/local/cuda*/targets /opt /usr/lib \
      /usr/local/lib) || true
    [ -n "$d" ] && libdirs=$libdirs:$d
  done
  export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "[gpu_carry] LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "[gpu_carry] carried libraries used: $(ls "$carry/lib" | tr '\n' ' ')"
  # build/kiln as the scripts expect it: the carried program with its libraries.
  mkdir -p build
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$LD_LIBRARY_PATH" "$carry/bin/kiln" \
    >build/kiln
  chmod +x build/kiln
  export KILN_SOURCE_DIR=$root KILN_BINARY=$root/build/kiln KILN_PYTHON=${KILN_PYTHON:-$(command -v python3)}
  ldd "$carry/bin/kiln" | grep "not found" && { echo "[gpu_carry] missing libraries" >&2; exit 1; }
  return 0
}

run_tests() {
  local out=$1 pass=0 fail=0 skip=0 failed=()
  for t in "$root"/.gpu/carried/tests/*; do
    local name; name=$(basename "$t")
    local log=$out/test_$name.log rc=0
    (cd "$root" && timeout 300 "$t") >"$log" 2>&1 || rc=$?
    if [ $rc -eq 0 ] && grep -q '\[  SKIPPED \]' "$log" && ! grep -q '\[  PASSED  \] [1-9]' "$log"; then
      skip=$((skip + 1)); echo "[gpu_carry] $name: skipped"
    elif [ $rc -eq 0 ]; then
      pass=$((pass + 1)); echo "[gpu_carry] $name: passed ($(grep -o '\[  PASSED  \] [0-9]* tests' "$log"))"
    else
      fail=$((fail + 1)); failed+=("$name"); echo "[gpu_carry] $name: FAILED (rc $rc)"
      grep -E '^\[  FAILED  \]|Failure|error|Error' "$log" | head -n 30 || true
    fi
  done
  echo "[gpu_carry] GPU tests: $pass passed, $fail failed, $skip skipped ${failed[*]:-}"
}

case $mode in
  pack) pack ;;
  run)
    what=${1:-all}; shift || true
    out=${OUT:-bench/out/gpu}; mkdir -p "$out"
    unpack
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv || true
    if [ "$what" = tests ] || [ "$what" = all ]; then run_tests "$out"; fi
    if [ "$what" = bench ] || [ "$what" = all ]; then
      bash bench/gpu_bench.sh --no-tests --out "$out" "$@" || echo "[gpu_carry] bench failed rc $?"
    fi
    ;;
  *) echo "usage: scripts/gpu_carry.sh pack | run [tests|bench|all] [bench options]" >&2; exit 2 ;;
esac

// What this machine can do at most, measured: the floors benchmarks compare kernels against
// (decode is bound by reading the weights once per step, prefill by the int8 or bf16 multiply-add
// rate). `kiln bench cpu` prints them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kiln/core/cpu_isa.h"

namespace kiln::ops::cpu {

// GB/s reading a `bytes` buffer (far larger than the caches) with every thread, best of `reps`.
double read_bandwidth_gbs(size_t bytes, int reps);
// GB/s of memcpy over a `bytes` buffer into another, counting bytes read plus bytes written.
double copy_bandwidth_gbs(size_t bytes, int reps);
// Int8 multiply-adds on registers with every thread, as GOPS (2 ops each), with the instruction
// the quantized kernel of tier `isa` uses (vpdpbusd on zmm or ymm; vpmaddubsw + vpmaddwd on
// AVX2); 0 for the scalar tier. `iters` loop trips per thread.
double int8_peak_gops(Isa isa, int64_t iters);
// fp32 FMAs on registers with every thread, GFLOP/s (zmm from avx512, ymm from avx2; 0 below).
double fp32_peak_gflops(Isa isa, int64_t iters);
// VDPBF16PS on zmm with every thread, GFLOP/s; 0 without AVX512-BF16.
double bf16_peak_gflops(int64_t iters);

}  // namespace kiln::ops::cpu

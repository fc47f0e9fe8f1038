// The x86 instruction-set tiers kiln's CPU kernels are written for, detected at run time by
// CPUID, and the KILN_ISA override that caps them (to test or compare a lower path on a machine
// that has a higher one). Kernels are compiled for their tier whatever -march says and called
// only when the CPU has it.
//
//   scalar    plain C++ (any CPU)
//   avx2      AVX2 + FMA: 8-lane int16 multiply-adds (vpmaddubsw) for the int8 dot products
//   avx_vnni  AVX2 + AVX-VNNI: 8-lane vpdpbusd (Alder Lake and later, Zen 5)
//   avx512    AVX-512 F/BW/VL + VNNI: 16-lane vpdpbusd (Ice Lake and later, Zen 4 and later);
//             bf16 GEMMs use VDPBF16PS where the CPU has AVX512-BF16
//   amx       AMX tiles (Sapphire Rapids and later): bf16 GEMMs and quantized prefill on tiles
//
// Tiers are not nested on every CPU (Zen 4 has avx512 but not avx_vnni), so "KILN_ISA=X" means
// the best tier the CPU has that is not above X; naming a tier the CPU lacks is an error.
#pragma once

#include <string_view>
#include <vector>

namespace kiln {

enum class Isa { scalar, avx2, avx_vnni, avx512, amx };

std::string_view isa_name(Isa isa);
bool isa_supported(Isa isa);        // this CPU (and OS) can run the tier
std::vector<Isa> supported_isas();  // every tier isa_supported accepts, lowest first
Isa best_isa_up_to(Isa cap);        // the highest supported tier <= cap (scalar at least)
// The tier kernels use: the best this CPU has, capped by KILN_ISA (read once; an unknown or
// unsupported name throws an Error naming the choices).
Isa active_isa();

}  // namespace kiln

#include "kiln/core/cpu_isa.h"

#include <cstdlib>
#include <string>

#include "kiln/core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace kiln {

namespace {

constexpr Isa kAll[] = {Isa::scalar, Isa::avx2, Isa::avx_vnni, Isa::avx512, Isa::amx};

#if defined(__x86_64__) || defined(__i386__)
struct Features {
  bool avx2 = false, fma = false, avx_vnni = false, avx512 = false, amx = false;
};

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const unsigned b7 = b, c7 = c, d7 = d;
  // __builtin_cpu_supports also checks that the OS saves the ymm/zmm state (XGETBV).
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  const bool avx512f = __builtin_cpu_supports("avx512f");
  const bool bw = b7 & (1u << 30), vl = b7 & (1u << 31), vnni = c7 & (1u << 11);
  f.avx512 = avx512f && bw && vl && vnni;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx_vnni = f.avx2 && (a & (1u << 4));
  const bool tile = d7 & (1u << 24), tbf16 = d7 & (1u << 22);
  if (tile && tbf16 && f.avx512) {
    // Linux hands out the 8 KB tile state only on request; the grant covers every thread.
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    f.amx = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }
  return f;
}

bool has(const Features& f, Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return f.avx2 && f.fma;
    case Isa::avx_vnni:
      return f.avx2 && f.fma && f.avx_vnni;
    case Isa::avx512:
      return f.avx512;
    case Isa::amx:
      return f.amx;
  }
  return false;
}
#endif

Isa read_override() {
  const Isa best = best_isa_up_to(Isa::amx);
  const char* s = std::getenv("KILN_ISA");
  if (!s || !*s) return best;
  std::string names;
  for (Isa isa : kAll) {
    if (isa_name(isa) == s) {
      KILN_CHECK(isa_supported(isa), "KILN_ISA", "KILN_ISA=", s, " but this CPU cannot run it (",
                 "it has up to ", isa_name(best), "); pick a lower tier or unset it");
      return isa;
    }
    names += std::string(names.empty() ? "" : ", ") + std::string(isa_name(isa));
  }
  fail("KILN_ISA", "KILN_ISA='", s, "' is not a tier: use one of ", names, " (or unset it)");
}

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx_vnni:
      return "avx_vnni";
    case Isa::avx512:
      return "avx512";
    case Isa::amx:
      return "amx";
  }
  return "?";
}

bool isa_supported(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  static const Features f = detect();
  return has(f, isa);
#else
  return isa == Isa::scalar;
#endif
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa isa : kAll)
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

Isa best_isa_up_to(Isa cap) {
  Isa best = Isa::scalar;
  for (Isa isa : kAll)
    if (isa <= cap && isa_supported(isa)) best = isa;
  return best;
}

Isa active_isa() {
  static const Isa isa = read_override();
  return isa;
}

}  // namespace kiln

// kiln bench cpu [--mib M] [--json]
// The machine's measured limits (ops/machine_peak.h), with every thread: memory read and copy
// bandwidth, and per ISA tier the int8 multiply-add rate of the quantized kernels' instruction,
// fp32 FMA and VDPBF16PS. The floors benchmarks state beside their figures: decode tokens/s at
// most read GB/s over the bytes read per token, prefill at most the int8 or bf16 rate over
// 2 x params FLOP per token.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "kiln/cli/command.h"
#include "kiln/core/cpu_isa.h"
#include "kiln/core/error.h"
#include "kiln/core/parallel.h"
#include "kiln/ops/machine_peak.h"

namespace kiln::cli {
namespace {

Command reg([](CLI::App& app) {
  CLI::App* bench = group(app, "bench", "Benchmarks (one JSON line on stdout)");
  auto mib = std::make_shared<int>(1024);
  auto json = std::make_shared<bool>(false);
  auto* cmd =
      bench->add_subcommand("cpu", "This CPU's measured bandwidth and int8/fp32/bf16 peaks");
  cmd->add_option("--mib", *mib, "Buffer for the bandwidth tests, MiB (well above the caches)")
      ->capture_default_str();
  cmd->add_flag("--json", *json, "One JSON line instead of the table");
  cmd->callback([mib, json] {
    KILN_CHECK(*mib >= 16 && *mib <= 65536, "bench", "--mib must be in [16, 65536], got ", *mib);
    using namespace ops::cpu;
    const size_t bytes = size_t(*mib) << 20;
    constexpr int64_t kIters = 20'000'000;
    nlohmann::json j;
    j["threads"] = num_threads();
    j["isa"] = isa_name(active_isa());
    j["read_gbs"] = read_bandwidth_gbs(bytes, 5);
    j["copy_gbs"] = copy_bandwidth_gbs(bytes / 2, 5);
    for (Isa isa : supported_isas()) {
      if (isa > active_isa() || isa == Isa::scalar || isa == Isa::amx) continue;
      j["int8_gops"][std::string(isa_name(isa))] = int8_peak_gops(isa, kIters);
      j["fp32_gflops"][std::string(isa_name(isa))] = fp32_peak_gflops(isa, kIters);
    }
    if (active_isa() >= Isa::avx512) j["bf16_gflops"] = bf16_peak_gflops(kIters);
    if (*json) {
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("threads %d, ISA tier %s\n", num_threads(), std::string(j["isa"]).c_str());
    std::printf("memory read  %8.1f GB/s\nmemory copy  %8.1f GB/s (read + write)\n",
                double(j["read_gbs"]), double(j["copy_gbs"]));
    if (j.contains("int8_gops"))
      for (auto& [tier, v] : j["int8_gops"].items())
        std::printf("int8 %-8s %8.1f GOPS   fp32 FMA %8.1f GFLOP/s\n", tier.c_str(), double(v),
                    double(j["fp32_gflops"][tier]));
    if (j.contains("bf16_gflops"))
      std::printf("bf16 VDPBF16PS %6.1f GFLOP/s\n", double(j["bf16_gflops"]));
  });
});

}  // namespace
}  // namespace kiln::cli

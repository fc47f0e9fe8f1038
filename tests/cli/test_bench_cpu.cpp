// `kiln bench cpu` and the KILN_ISA cap as a user meets them: the machine's limits come out as
// JSON on the tier KILN_ISA names, kernels report the tier they ran on, and a tier that is not
// one, or that the CPU lacks, is refused naming the choices.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/core/cpu_isa.h"
#include "test_util.h"

namespace kiln {
namespace {

test::CommandResult kiln_with_isa(const std::string& isa, const std::string& args) {
  const std::string env = isa.empty() ? "" : "KILN_ISA=" + isa + " ";
  return test::run_command(env + test::kiln_binary() + " " + args + " 2>&1");
}

nlohmann::json last_json_line(const std::string& out) {
  const size_t at = out.rfind("\n{");
  return nlohmann::json::parse(at == std::string::npos ? out : out.substr(at + 1));
}

TEST(BenchCpu, ReportsEveryTierUpToTheCap) {
  for (Isa cap : supported_isas()) {
    auto r = kiln_with_isa(std::string(isa_name(cap)), "bench cpu --mib 16 --json");
    ASSERT_EQ(r.status, 0) << r.output;
    const nlohmann::json j = last_json_line(r.output);
    EXPECT_EQ(j["isa"], isa_name(cap));
    EXPECT_GT(double(j["read_gbs"]), 0.0);
    EXPECT_GT(double(j["copy_gbs"]), 0.0);
    for (Isa isa : supported_isas()) {
      if (isa == Isa::scalar || isa == Isa::amx) continue;
      EXPECT_EQ(j.contains("int8_gops") && j["int8_gops"].contains(isa_name(isa)), isa <= cap)
          << "cap " << isa_name(cap) << ", tier " << isa_name(isa) << ": " << j.dump();
    }
  }
}

TEST(BenchCpu, BenchInferRunsOnTheCappedTier) {
  const std::string cfg = test::source_dir() + "/configs/models/llama-tiny.json";
  auto r = kiln_with_isa(
      "scalar", "bench infer --model-config " + cfg + " --pp 8 --tg 2 --reps 1 --json --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(last_json_line(r.output)["isa"], "scalar") << r.output;
}

TEST(BenchCpu, BadTierIsRefused) {
  auto r = kiln_with_isa("avx9000", "bench cpu --mib 16");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("KILN_ISA='avx9000' is not a tier"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("avx_vnni"), std::string::npos) << r.output;
  for (Isa isa : {Isa::avx2, Isa::avx_vnni, Isa::avx512, Isa::amx}) {
    if (isa_supported(isa)) continue;
    auto lacking = kiln_with_isa(std::string(isa_name(isa)), "bench cpu --mib 16");
    EXPECT_NE(lacking.status, 0);
    EXPECT_NE(lacking.output.find("this CPU cannot run it"), std::string::npos) << lacking.output;
  }
}

}  // namespace
}  // namespace kiln

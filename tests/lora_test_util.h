// Shared by the LoRA tests (training, packing, the engine, the server): an adapter initialised as
// PEFT does it but with B random, since PEFT's B = 0 leaves the base unchanged and every gradient
// of A zero, so nothing would be tested.
#pragma once

#include <string>

#include "kiln/core/rng.h"
#include "kiln/model/lora.h"

namespace kiln::test {

// A as PEFT initialises it from `seed`; B ~ N(0, scale^2) from seed + 1.
inline void init_with_random_b(LoraWeights& ad, uint64_t seed, float scale) {
  ad.init(seed);
  Rng rng(seed + 1);
  for (const ParamInfo& p : ad.params())
    if (p.name.find("lora_B") != std::string::npos)
      for (int64_t i = 0; i < p.numel(); ++i)
        ad.weights().f32()[p.offset + i] = scale * rng.normal();
}

}  // namespace kiln::test

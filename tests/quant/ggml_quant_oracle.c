/* The oracle for tests/quant/test_kquant_write.cpp: runs ggml's own quantizer (ggml_quantize_chunk
 * without an importance matrix, the call llama-quantize makes; quantize_row_q8_K_ref for q8_K,
 * which llama-quantize never writes) on the inputs of kquant_cases.h and prints the FNV-1a hash
 * of each encoding as the test's table rows. Not built by CMake (CI has no llama.cpp build); to
 * regenerate, after bench/build_llama_server.sh:
 *   L=/work/llama.cpp-src B=/work/llama.cpp-build
 *   cc -O2 -I$L/ggml/include tests/quant/ggml_quant_oracle.c $B/ggml/src/libggml-base.a -lm \
 *      -lstdc++ -fopenmp -o /tmp/ggml_quant_oracle && /tmp/ggml_quant_oracle
 * With an argument TYPE CASE it prints that encoding in hex instead. */
#include <stdio.h>
#include <string.h>

#include "ggml.h"
#include "kquant_cases.h"

void quantize_row_q8_K_ref(const float* x, void* y, int64_t k); /* ggml-quants.h, internal */

static const struct {
  const char* name;
  enum ggml_type type;
} kTypes[] = {
    {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
    {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}, {"q2_k", GGML_TYPE_Q2_K},
    {"q3_k", GGML_TYPE_Q3_K}, {"q4_k", GGML_TYPE_Q4_K}, {"q5_k", GGML_TYPE_Q5_K},
    {"q6_k", GGML_TYPE_Q6_K}, {"q8_k", GGML_TYPE_Q8_K},
};

static size_t encode(int t, int c, uint8_t* out) {
  float x[1024];
  const int n = kq_case_len(c);
  kq_case_fill(c, x);
  const size_t bytes = ggml_row_size(kTypes[t].type, n);
  memset(out, 0, bytes); /* q8_K leaves bsums unset for an all-zero block */
  if (kTypes[t].type == GGML_TYPE_Q8_K) {
    quantize_row_q8_K_ref(x, out, n);
  } else {
    ggml_quantize_chunk(kTypes[t].type, x, out, 0, 1, n, NULL);
  }
  return bytes;
}

int main(int argc, char** argv) {
  static uint8_t out[1024 * 2];
  const int ntypes = (int)(sizeof kTypes / sizeof kTypes[0]);
  for (int t = 0; t < ntypes; ++t)
    for (int c = 0; c < KQ_CASES; ++c) {
      if (argc == 3) {
        if (strcmp(argv[1], kTypes[t].name) || strcmp(argv[2], kq_case_names[c])) continue;
        const size_t n = encode(t, c, out);
        for (size_t i = 0; i < n; ++i) printf("%02x%s", out[i], i % 32 == 31 ? "\n" : "");
        printf("\n");
        return 0;
      }
      const size_t n = encode(t, c, out);
      printf("    {QType::%s, \"%s\", 0x%016llxull},\n", kTypes[t].name, kq_case_names[c],
             (unsigned long long)kq_fnv1a(out, n));
    }
  return argc == 3 ? 1 : 0;
}

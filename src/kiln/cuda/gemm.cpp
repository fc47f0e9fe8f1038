// GEMMs through cuBLASLt. A row-major C (M,N) = op(A) op(B) is, read column-major, C^T (N,M) =
// op(B)^T op(A)^T: so cuBLASLt gets B as its first operand and A as its second, with M and N
// swapped, and no data moves. Per (shape, types, transposes, epilogue, pointer alignments) the
// descriptors and the heuristic's algorithm are built once and cached.
#include "kiln/cuda/gemm.h"

#include <cublasLt.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>

namespace kiln::cuda {

namespace {

std::atomic<bool> g_tf32{false};
std::atomic<int64_t> g_unfused{0};

template <typename T>
struct TypeInfo;
template <>
struct TypeInfo<float> {
  static constexpr cudaDataType_t id = CUDA_R_32F;
  static constexpr const char* name = "fp32";
};
template <>
struct TypeInfo<bf16> {
  static constexpr cudaDataType_t id = CUDA_R_16BF;
  static constexpr const char* name = "bf16";
};
template <>
struct TypeInfo<f16> {
  static constexpr cudaDataType_t id = CUDA_R_16F;
  static constexpr const char* name = "fp16";
};

// What a GEMM was asked to do, for error messages (built only when a call fails).
struct Problem {
  int M, N, K;
  bool trans_a, trans_b;
  const char* tin;
  const char* tout;
  cublasLtEpilogue_t epilogue;
};

const char* epilogue_name(cublasLtEpilogue_t e) {
  switch (e) {
    case CUBLASLT_EPILOGUE_DEFAULT:
      return "none";
    case CUBLASLT_EPILOGUE_BIAS:
      return "bias";
    case CUBLASLT_EPILOGUE_GELU:
      return "gelu";
    case CUBLASLT_EPILOGUE_GELU_AUX:
      return "gelu+aux";
    case CUBLASLT_EPILOGUE_GELU_BIAS:
      return "bias+gelu";
    case CUBLASLT_EPILOGUE_GELU_AUX_BIAS:
      return "bias+gelu+aux";
    default:
      return "other";
  }
}

std::string describe(const Problem& p) {
  return str("M=", p.M, " N=", p.N, " K=", p.K, " trans_a=", p.trans_a, " trans_b=", p.trans_b, " ",
             p.tin, " -> ", p.tout, " epilogue ", epilogue_name(p.epilogue));
}

// Throws Error("[cuda gemm] <call> failed: <cuBLAS's message> (<status name>) for M=... ")
// unless st is CUBLAS_STATUS_SUCCESS.
void check_cublas(cublasStatus_t st, const char* call, const char* op,
                  const Problem* problem = nullptr) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  throw Error(str("[cuda ", op, "] ", call, " failed: ", cublasLtGetStatusString(st), " (",
                  cublasLtGetStatusName(st), ")",
                  problem ? str(" for ", describe(*problem)) : std::string()));
}
#define KILN_CUBLAS(op, problem, call) check_cublas((call), #call, (op), (problem))

cublasLtHandle_t handle() {
  // A throw leaves the static uninitialized, so the next call tries again.
  static cublasLtHandle_t h = [] {
    require("cuda gemm");
    cublasLtHandle_t r = nullptr;
    KILN_CUBLAS("gemm", nullptr, cublasLtCreate(&r));
    return r;  // lives for the process, like the streams
  }();
  return h;
}

// One workspace per stream: GEMMs on one stream run in order, so they can share it. Taken from
// the pool on that stream and kept for the process.
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
void* workspace(cudaStream_t s) {
  static std::mutex mu;
  static std::unordered_map<cudaStream_t, void*> spaces;
  std::lock_guard lock(mu);
  void*& p = spaces[s];
  if (!p) p = device_alloc(kWorkspaceBytes, s, "gemm workspace");
  return p;
}

// The largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
int64_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (!a) return 0;
  int64_t r = 1;
  while (r < 256 && (a & uintptr_t(r)) == 0) r <<= 1;
  return r;
}

// The cached state of one GEMM configuration.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // column-major view
  cublasLtMatmulAlgo_t algo{};
  bool found = false;         // the heuristic returned an algorithm
  bool has_pointers = false;  // bias or aux pointers are set per call (under mu)
  std::mutex mu;
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// M, N, K, trans_a, trans_b, in type, out type, compute type, epilogue, and the alignments of
// A, B, C, D, bias and aux (the algorithm chosen depends on them).
using Key = std::array<int64_t, 15>;

struct Request {
  Problem p;
  cudaDataType_t tin, tout;
  cublasComputeType_t compute;
  const void *a, *b, *c;  // row-major operands; c is both C and D
  void* d;
  const float* bias;
  void* aux;
};

template <typename T>
void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v,
              const char* name, const Problem& p) {
  check_cublas(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)), name, "gemm", &p);
}

// Builds the descriptors and asks the heuristic. With `allow_none`, no algorithm (or an
// unsupported epilogue) leaves found = false instead of throwing.
std::unique_ptr<Plan> build_plan(const Request& r, bool allow_none) {
  const Problem& p = r.p;
  auto plan = std::make_unique<Plan>();
  KILN_CUBLAS("gemm", &p, cublasLtMatmulDescCreate(&plan->desc, r.compute, CUDA_R_32F));
  // Column-major: first operand is B (N x K after its op), second is A (K x M after its op).
  const cublasOperation_t op_first = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_attr(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, op_first, "set TRANSA", p);
  set_attr(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, op_second, "set TRANSB", p);
  set_attr(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, p.epilogue, "set EPILOGUE", p);
  if (r.bias) {
    // Bias is fp32 for every output type (cuBLASLt allows fp32 bias with a 16-bit D).
    const int32_t bias_type = CUDA_R_32F;
    set_attr(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type, "set BIAS_DATA_TYPE", p);
    const void* bias = r.bias;
    set_attr(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, "set BIAS_POINTER", p);
    plan->has_pointers = true;
  }
  if (r.aux) {
    const int64_t ld = p.N;  // aux is (M,N) row-major like D: column-major (N,M), ld N
    set_attr(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, r.aux, "set AUX_POINTER", p);
    set_attr(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, ld, "set AUX_LD", p);
    plan->has_pointers = true;
  }
  // Stored shapes (rows, cols, ld) of the column-major views of the row-major operands.
  const uint64_t first_rows = p.trans_b ? p.K : p.N, first_cols = p.trans_b ? p.N : p.K;
  const uint64_t second_rows = p.trans_a ? p.M : p.K, second_cols = p.trans_a ? p.K : p.M;
  KILN_CUBLAS(
      "gemm", &p,
      cublasLtMatrixLayoutCreate(&plan->a, r.tin, first_rows, first_cols, int64_t(first_rows)));
  KILN_CUBLAS(
      "gemm", &p,
      cublasLtMatrixLayoutCreate(&plan->b, r.tin, second_rows, second_cols, int64_t(second_rows)));
  KILN_CUBLAS("gemm", &p, cublasLtMatrixLayoutCreate(&plan->c, r.tout, p.N, p.M, p.N));

  cublasLtMatmulPreference_t pref = nullptr;
  KILN_CUBLAS("gemm", &p, cublasLtMatmulPreferenceCreate(&pref));
  struct PrefGuard {
    cublasLtMatmulPreference_t p;
    ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } guard{pref};
  auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, auto v, const char* name) {
    check_cublas(cublasLtMatmulPreferenceSetAttribute(pref, attr, &v, sizeof(v)), name, "gemm", &p);
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes),
           "set MAX_WORKSPACE_BYTES");
  // The algorithm must work with the pointers' actual alignments (the default assumes 256).
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(alignment(r.b)), "set ALIGNMENT_A");
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(alignment(r.a)), "set ALIGNMENT_B");
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t(alignment(r.c)), "set ALIGNMENT_C");
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t(alignment(r.d)), "set ALIGNMENT_D");

  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      handle(), plan->desc, plan->a, plan->b, plan->c, plan->c, pref, 1, &result, &count);
  if (st == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    plan->algo = result.algo;
    plan->found = true;
  } else if (!allow_none) {
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
      check_cublas(st, "cublasLtMatmulAlgoGetHeuristic", "gemm", &p);
    fail("cuda gemm", "cuBLASLt has no algorithm for ", describe(p), " with pointer alignments A ",
         alignment(r.a), ", B ", alignment(r.b), ", C ", alignment(r.c), ", D ", alignment(r.d),
         " bytes: align the buffers to 16 bytes (whole rows of a multiple of 8 ",
         "elements), or use another dtype pair");
  }
  return plan;
}

Plan& plan_for(const Request& r, bool allow_none) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Plan>> plans;  // kept for the process
  const Problem& p = r.p;
  const Key key{p.M,
                p.N,
                p.K,
                p.trans_a,
                p.trans_b,
                int64_t(r.tin),
                int64_t(r.tout),
                int64_t(r.compute),
                int64_t(p.epilogue),
                alignment(r.a),
                alignment(r.b),
                alignment(r.c),
                alignment(r.d),
                alignment(r.bias),
                alignment(r.aux)};
  std::lock_guard lock(mu);
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, build_plan(r, allow_none)).first;
  return *it->second;
}

void run_plan(Plan& plan, const Request& r, float alpha, float beta, cudaStream_t s) {
  void* ws = workspace(s);
  auto matmul = [&] {
    KILN_CUBLAS("gemm", &r.p,
                cublasLtMatmul(handle(), plan.desc, &alpha, r.b, plan.a, r.a, plan.b, &beta, r.c,
                               plan.c, r.d, plan.c, &plan.algo, ws, kWorkspaceBytes, s));
  };
  if (!plan.has_pointers) return matmul();
  // The bias and aux pointers live in the shared descriptor: set them and launch as one step.
  std::lock_guard lock(plan.mu);
  if (r.bias) {
    const void* bias = r.bias;
    set_attr(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, "set BIAS_POINTER", r.p);
  }
  if (r.aux)
    set_attr(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, r.aux, "set AUX_POINTER", r.p);
  matmul();
}

}  // namespace

void set_tf32(bool on) {
  g_tf32.store(on);
}
bool tf32() {
  return g_tf32.load();
}
int64_t unfused_epilogues() {
  return g_unfused.load();
}

template <typename TIn, typename TOut>
void gemm(TOut* c, const TIn* a, const TIn* b, int M, int N, int K, bool trans_a, bool trans_b,
          float alpha, float beta, cudaStream_t s, Epilogue ep, const float* bias, TOut* aux) {
  KILN_CHECK(M >= 0 && N >= 0 && K >= 0, "cuda gemm", "negative shape M=", M, " N=", N, " K=", K);
  if (M == 0 || N == 0) return;
  KILN_CHECK(K > 0, "cuda gemm", "K=0 (an empty sum) for M=", M, " N=", N,
             ": skip the call instead");
  KILN_CHECK(c && a && b, "cuda gemm", "null operand (A ", a, ", B ", b, ", C ", c, ")");
  const bool has_bias = ep == Epilogue::bias || ep == Epilogue::bias_gelu;
  const bool has_gelu = ep == Epilogue::gelu || ep == Epilogue::bias_gelu;
  KILN_CHECK(!has_bias || bias, "cuda gemm", "the bias epilogue needs a bias pointer");
  KILN_CHECK(has_bias || !bias, "cuda gemm", "a bias pointer was given without a bias epilogue");
  KILN_CHECK(has_gelu || !aux, "cuda gemm", "aux is the GELU's input: give it only with gelu or ",
             "bias_gelu");
  KILN_CHECK(!aux || (aux != c), "cuda gemm", "aux and C must be different buffers");

  const bool use_tf32 = std::is_same_v<TIn, float> && tf32();
  Request r{{M, N, K, trans_a, trans_b, TypeInfo<TIn>::name, TypeInfo<TOut>::name,
             CUBLASLT_EPILOGUE_DEFAULT},
            TypeInfo<TIn>::id,
            TypeInfo<TOut>::id,
            use_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
            a,
            b,
            c,
            c,
            nullptr,
            nullptr};
  if (ep != Epilogue::none) {
    // Fused when cuBLASLt has a kernel for it: aux needs ld (= N) divisible by 8.
    const bool fusable = !aux || N % 8 == 0;
    if (fusable) {
      Request fused = r;
      fused.p.epilogue =
          has_gelu
              ? (aux ? (has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX)
                     : (has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU))
              : CUBLASLT_EPILOGUE_BIAS;
      fused.bias = bias;
      fused.aux = aux;
      Plan& plan = plan_for(fused, /*allow_none=*/true);
      if (plan.found) return run_plan(plan, fused, alpha, beta, s);
    }
  }
  run_plan(plan_for(r, /*allow_none=*/false), r, alpha, beta, s);
  if (ep != Epilogue::none) {
    g_unfused.fetch_add(1, std::memory_order_relaxed);
    detail::apply_epilogue<TOut>(c, aux, bias, M, N, has_gelu, s);
  }
}

template void gemm<float, float>(float*, const float*, const float*, int, int, int, bool, bool,
                                 float, float, cudaStream_t, Epilogue, const float*, float*);
template void gemm<bf16, float>(float*, const bf16*, const bf16*, int, int, int, bool, bool, float,
                                float, cudaStream_t, Epilogue, const float*, float*);
template void gemm<bf16, bf16>(bf16*, const bf16*, const bf16*, int, int, int, bool, bool, float,
                               float, cudaStream_t, Epilogue, const float*, bf16*);
template void gemm<f16, float>(float*, const f16*, const f16*, int, int, int, bool, bool, float,
                               float, cudaStream_t, Epilogue, const float*, float*);
template void gemm<f16, f16>(f16*, const f16*, const f16*, int, int, int, bool, bool, float, float,
                             cudaStream_t, Epilogue, const float*, f16*);

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const float* bias, int N, int IN, int OUT,
                    ops::WeightLayout layout, cudaStream_t s, bool gelu, T* pre) {
  KILN_CHECK(N >= 0 && IN > 0 && OUT >= 0, "cuda linear_forward", "bad shape N=", N, " IN=", IN,
             " OUT=", OUT);
  KILN_CHECK(gelu || !pre, "cuda linear_forward",
             "pre is the GELU's input: give it only with gelu");
  const Epilogue ep = gelu ? (bias ? Epilogue::bias_gelu : Epilogue::gelu)
                           : (bias ? Epilogue::bias : Epilogue::none);
  // out_in: y = x W^T with W (OUT,IN); in_out: y = x W with W (IN,OUT).
  gemm<T, T>(y, x, w, N, OUT, IN, false, layout == ops::WeightLayout::out_in, 1.0f, 0.0f, s, ep,
             bias, pre);
}

template <typename T>
void linear_backward(T* dx, float* dw, float* dbias, const T* dy, const T* x, const T* w, int N,
                     int IN, int OUT, ops::WeightLayout layout, cudaStream_t s) {
  KILN_CHECK(N >= 0 && IN > 0 && OUT > 0, "cuda linear_backward", "bad shape N=", N, " IN=", IN,
             " OUT=", OUT);
  if (N == 0) return;  // dx is empty; nothing to add to dw or dbias
  const bool out_in = layout == ops::WeightLayout::out_in;
  // dx (N,IN) = dy (N,OUT) @ W  (W^T when W is stored (IN,OUT)).
  if (dx) gemm<T, T>(dx, dy, w, N, IN, OUT, false, !out_in, 1.0f, 0.0f, s);
  if (dw) {
    if (out_in)
      gemm<T, float>(dw, dy, x, OUT, IN, N, true, false, 1.0f, 1.0f, s);  // dW (OUT,IN) += dy^T x
    else
      gemm<T, float>(dw, x, dy, IN, OUT, N, true, false, 1.0f, 1.0f, s);  // dW (IN,OUT) += x^T dy
  }
  if (dbias) bias_backward<T>(dbias, dy, N, OUT, s);
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int, int, int,
                                    ops::WeightLayout, cudaStream_t, bool, float*);
template void linear_forward<bf16>(bf16*, const bf16*, const bf16*, const float*, int, int, int,
                                   ops::WeightLayout, cudaStream_t, bool, bf16*);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int, int, int, ops::WeightLayout, cudaStream_t);
template void linear_backward<bf16>(bf16*, float*, float*, const bf16*, const bf16*, const bf16*,
                                    int, int, int, ops::WeightLayout, cudaStream_t);

}  // namespace kiln::cuda

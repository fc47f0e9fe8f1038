// bf16 GEMM with fp32 accumulation, and bf16 <-> fp32 conversion. Row-major, the contract of
// gemm() in matmul.h with bf16 inputs (stored as uint16_t, see core/dtype.h) and an fp32 C.
// Cost: 2*M*N*K FLOPs plus one pack of A and B (M*K + K*N bf16 read and written) per call.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln::ops {

namespace ref {
// C (M,N) = alpha * op(A) @ op(B) + beta * C, op(X) = X^T when trans_X; products and sums in
// double, rounded to fp32 once. A is (M,K) or, transposed, (K,M); B is (K,N) or (N,K).
// beta == 0 means C is not read.
void gemm_bf16(float* c, const uint16_t* a, const uint16_t* b, int M, int N, int K, bool trans_a,
               bool trans_b, float alpha, float beta);
}  // namespace ref

namespace cpu {

// The kernels gemm_bf16 can run. Each bf16 product is exact in fp32 and every backend sums in
// fp32, so backends differ from each other by fp32 rounding only. amx and avx512_bf16 compute
// each C element on one thread in a fixed K order: the same bits at any thread count. fallback
// is OpenBLAS's: the same bits at a given thread count. amx and avx512_bf16 flush bf16
// subnormal inputs to zero, as the instructions do.
enum class Bf16Backend : uint8_t {
  amx,          // Sapphire Rapids tiles (TDPBF16PS), 32x32 C blocks
  avx512_bf16,  // VDPBF16PS, 8x32 register blocks
  fallback,     // convert to fp32 and call cblas_sgemm
};

// "amx", "avx512_bf16" or "fallback".
std::string_view bf16_backend_name(Bf16Backend b);
// Whether this CPU has the backend (for amx: and the kernel granted the tile state).
bool bf16_backend_available(Bf16Backend b);
// The backend gemm_bf16 uses, chosen once per process: KILN_BF16_BACKEND=amx|avx512_bf16|fallback
// if set (an Error if this machine cannot run it), else the fastest available.
Bf16Backend bf16_backend_kind();
// Its name, for logs and benchmarks.
std::string_view bf16_backend();

// Same contract as ref::gemm_bf16, on bf16_backend_kind(). Packs op(A) and op(B) once per call
// into buffers owned by the calling thread, then computes C blocks with parallel_for.
void gemm_bf16(float* c, const uint16_t* a, const uint16_t* b, int M, int N, int K, bool trans_a,
               bool trans_b, float alpha, float beta);
// The same on a named backend (tests and benchmarks run every backend in one process). Throws
// Error if !bf16_backend_available(backend).
void gemm_bf16_on(Bf16Backend backend, float* c, const uint16_t* a, const uint16_t* b, int M, int N,
                  int K, bool trans_a, bool trans_b, float alpha, float beta);

// n values converted with round-to-nearest-even: bit for bit kiln::f32_to_bf16 / bf16_to_f32
// (core/dtype.h), NaN payloads aside. Vectorized and split over the thread pool.
void f32_to_bf16(uint16_t* dst, const float* src, int64_t n);
void bf16_to_f32(float* dst, const uint16_t* src, int64_t n);

}  // namespace cpu

}  // namespace kiln::ops

// common.cuh -- the integer types and correctly rounded float helpers shared by accel/kernels/*.cu.
//
// A kernel source includes it with #include "common.cuh". NVRTC (CuPy's RawModule) is given the
// source with this file already inlined by accel.kernels.source(), so it compiles one header-free
// text, and CuPy's kernel cache, keyed by that text, sees an edit of this file; nvcc (the CI
// compile check) and the SIMT emulator (accel/kernels/simt) resolve the include themselves.
//
// Each *_rn helper is one IEEE operation rounded to nearest (__fmul_rn and friends), never
// contracted with a neighbour into a fused multiply-add, so a kernel written with them rounds
// every step like NumPy's per-ufunc arithmetic in the same dtype: the reference's result, bit
// for bit. They are overloaded for float and double so kernel templates can call them on T.
#ifndef TWINSPARSE_KERNELS_COMMON_CUH
#define TWINSPARSE_KERNELS_COMMON_CUH

typedef long long i64;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

__device__ __forceinline__ float  abs_t(float x)  { return fabsf(x); }
__device__ __forceinline__ double abs_t(double x) { return fabs(x); }
__device__ __forceinline__ float  mul_rn(float a, float b)   { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float  add_rn(float a, float b)   { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float  sub_rn(float a, float b)   { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float  div_rn(float a, float b)   { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
// whether a magnitude |x| is finite (false for inf and for NaN, whose comparisons are false)
__device__ __forceinline__ bool finite_abs(float a)  { return a <= 3.40282346638528859812e+38f; }
__device__ __forceinline__ bool finite_abs(double a) { return a <= 1.79769313486231570815e+308; }
// an int64 converted to T with round-to-nearest (NumPy's astype)
__device__ __forceinline__ float  to_t(i64 v, float)  { return __ll2float_rn(v); }
__device__ __forceinline__ double to_t(i64 v, double) { return __ll2double_rn(v); }


// A 16-byte vector of T (float4 / double2: N elements) for the vectorised elementwise kernels:
// element access by a compile-time index after full unrolling. aligned16(p): whether p may be
// accessed as such vectors (the GPU faults on a misaligned 16-byte access).
template <typename T> struct Vec16;
template <> struct Vec16<float> {
    typedef float4 V; enum { N = 4 };
    static __device__ __forceinline__ float get(const V& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }
    static __device__ __forceinline__ void set(V& v, int j, float x)
    {
        if (j == 0) v.x = x; else if (j == 1) v.y = x; else if (j == 2) v.z = x; else v.w = x;
    }
};
template <> struct Vec16<double> {
    typedef double2 V; enum { N = 2 };
    static __device__ __forceinline__ double get(const V& v, int j) { return j == 0 ? v.x : v.y; }
    static __device__ __forceinline__ void set(V& v, int j, double x) { if (j == 0) v.x = x; else v.y = x; }
};
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0; }

#endif  // TWINSPARSE_KERNELS_COMMON_CUH

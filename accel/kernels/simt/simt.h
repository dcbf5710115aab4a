// simt.h -- the CUDA device-side vocabulary that accel/kernels/*.cu use, for running those exact
// sources on a CPU (accel/kernels/simt: the SIMT emulator; runtime.cpp holds the scheduler).
//
// Execution model. A launch runs its blocks one after another (in a seeded random order when the
// seed is non-zero). Within a block every CUDA thread is a coroutine with its own stack; a thread
// runs until it reaches __syncthreads() or a warp collective (__shfl_*_sync, __ballot_sync,
// __match_any_sync), where it waits until every thread of the block (of the warp) has arrived at
// the same call site. Between such points threads run one at a time, in a seeded random order
// when the seed is non-zero, so a result that depends on an unsynchronised interleaving changes
// with the seed. Checked, and reported as a launch error naming the kernel, block, thread and
// source line: threads of one block (warp) waiting at different barriers (collectives), a thread
// that exits while others wait for it (both hang or are undefined on a GPU), and a collective with
// a partial lane mask (the kernels here use full warps only). __shared__ memory is filled with a
// poison byte before every block, as a GPU leaves it uninitialised.
//
// Arithmetic: the *_rn intrinsics are single IEEE operations (compiled with -ffp-contract=off, so
// no fused multiply-add), equal to the GPU's. Not modelled: timing, the memory model beyond
// barrier ordering (no data-race detector), bounds of global memory, half precision.
//
// Vector memory access: the CUDA vector types the kernels load and store whole (uint2, uint4,
// ulonglong2, float4, double2) have their CUDA size and alignment, and the cache-hinted load and
// store intrinsics (__ldg, __ldcs, __stwb, __stcs) check that the address is aligned to the
// accessed type, as the GPU does (a misaligned 16-byte access faults with "misaligned address"):
// a kernel that vector-loads from an address the host did not prove aligned is a launch error
// naming the source line. Plain dereferences are not checked (C++ gives no hook for them).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace simt {
struct Dim3 { unsigned x, y, z; };
extern Dim3 thread_idx, block_idx, block_dim, grid_dim;

void sync_block(int line);
// every lane of the calling thread's warp contributes `mine`; returns all 32 contributions
void warp_gather(int line, unsigned mask, uint64_t mine, uint64_t* all);

inline unsigned lane() { return thread_idx.x & 31u; }

// reports a misaligned vector access as a launch error and ends the thread (runtime.cpp)
[[noreturn]] void misaligned(int line, const void* p, unsigned align, const char* what);

template <class T> inline const T* check_aligned(int line, const T* p, const char* what)
{
    if (reinterpret_cast<uintptr_t>(p) % alignof(T) != 0) misaligned(line, p, (unsigned)alignof(T), what);
    return p;
}
template <class T> inline T ld(int line, const T* p, const char* what) { return *check_aligned(line, p, what); }
template <class T> inline void st(int line, T* p, T v, const char* what)
{
    *const_cast<T*>(check_aligned(line, static_cast<const T*>(p), what)) = v;
}

template <class T> inline uint64_t to_bits(T v) { uint64_t b = 0; memcpy(&b, &v, sizeof(T)); return b; }
template <class T> inline T from_bits(uint64_t b) { T v; memcpy(&v, &b, sizeof(T)); return v; }

template <class T> inline T shfl_up(int line, unsigned mask, T v, unsigned delta)
{
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t all[32];
    warp_gather(line, mask, to_bits(v), all);
    const unsigned l = lane();
    return l >= delta ? from_bits<T>(all[l - delta]) : v;
}

template <class T> inline T shfl_down(int line, unsigned mask, T v, unsigned delta)
{
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    uint64_t all[32];
    warp_gather(line, mask, to_bits(v), all);
    const unsigned l = lane();
    return l + delta < 32 ? from_bits<T>(all[l + delta]) : v;
}

inline unsigned ballot(int line, unsigned mask, int pred)
{
    uint64_t all[32];
    warp_gather(line, mask, pred != 0, all);
    unsigned out = 0;
    for (unsigned l = 0; l < 32; ++l) out |= (all[l] ? 1u : 0u) << l;
    return out;
}

template <class T> inline unsigned match_any(int line, unsigned mask, T v)
{
    uint64_t all[32];
    const uint64_t mine = to_bits(v);
    warp_gather(line, mask, mine, all);
    unsigned out = 0;
    for (unsigned l = 0; l < 32; ++l) out |= (all[l] == mine ? 1u : 0u) << l;
    return out;
}
}  // namespace simt

// CUDA's built-in vector types that the kernels access whole: CUDA's sizes and alignments
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) ulonglong2 { unsigned long long x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
static_assert(sizeof(uint4) == 16 && sizeof(ulonglong2) == 16 && sizeof(uint2) == 8, "CUDA vector sizes");

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
// every __shared__ variable lives in one section, which the runtime poisons before each block
#define __shared__ static __attribute__((section("simt_shared")))

#define threadIdx (::simt::thread_idx)
#define blockIdx (::simt::block_idx)
#define blockDim (::simt::block_dim)
#define gridDim (::simt::grid_dim)

#define __syncthreads() ::simt::sync_block(__LINE__)
#define __shfl_up_sync(mask, v, d) ::simt::shfl_up(__LINE__, (mask), (v), (d))
#define __shfl_down_sync(mask, v, d) ::simt::shfl_down(__LINE__, (mask), (v), (d))
#define __ballot_sync(mask, p) ::simt::ballot(__LINE__, (mask), (p))
#define __match_any_sync(mask, v) ::simt::match_any(__LINE__, (mask), (v))

// atomics: threads of the emulator never run at the same time, so a read-modify-write is atomic
template <class T> inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }

template <class T> inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }

// cache-hinted loads and stores: the hint changes nothing here; the alignment is checked
#define __ldg(p) ::simt::ld(__LINE__, (p), "__ldg")
#define __ldcs(p) ::simt::ld(__LINE__, (p), "__ldcs")
#define __stwb(p, v) ::simt::st(__LINE__, (p), (v), "__stwb")
#define __stcs(p, v) ::simt::st(__LINE__, (p), (v), "__stcs")

// blocks run one after another and threads never overlap, so every write is already visible
inline void __threadfence() {}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline long long __double_as_longlong(double x) { long long u; memcpy(&u, &x, 8); return u; }

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline double __dsqrt_rn(double x) { return sqrt(x); }
inline float __ll2float_rn(long long v) { return (float)v; }
inline double __ll2double_rn(long long v) { return (double)v; }

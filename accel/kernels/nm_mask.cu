// nm_mask.cu -- N:M masks along the GEMM reduction dimension for every weight of a model in one
// launch (twin: reference/masks.py nm_mask, nm_masks).
//
// What it computes. Each weight t is viewed as [O, I, S] (C order): Linear [O, I] has S = 1; Conv
// [O, I, kh, kw] along the reduction axis has S = kh*kw (the reference permutes to channels-last
// [O, kh, kw, I] and groups m consecutive input channels at each (o, kh, kw)); axis="rows" is
// [O, I*kh*kw] with S = 1. With q = o * (I/m) + j (the row-group), group (q, s) holds the m elements
//     w[o, j*m + l, s],  l = 0..m-1,   at flat index  (q*m + l) * S + s.
// In each group the n largest |w| are kept, ties -> smaller l (the reference's stable argsort of
// -|w| within the group). Equivalently element l is kept iff
//     rank(l) = #{ l' : |w_l'| > |w_l|  or  (|w_l'| == |w_l| and l' < l) }  <  n,
// which is what each thread evaluates: the ranks are a permutation of 0..m-1 (a strict total order
// on (-|w|, l)), so exactly n elements per group are kept, the same n as the stable sort keeps.
// |w| for finite w is exact. Non-finite weights are an error the host reports: every thread that
// reads a NaN or inf sets *bad = 1 (the same value from any thread: no atomic needed), so the
// check costs no extra pass over the weights; the masks of such a launch are discarded.
//
// Layout. A table per tensor (pointer, offset of its mask in one flat output buffer, S, number of
// groups) and a chunk table (tensor, first group; up to NM_CHUNK_GROUPS groups per chunk): one
// block per chunk, grid-stride, any number of tensors in one launch (one per dtype: the tensors of
// the other dtype have a null pointer in this launch's table and are skipped). One thread per group; a
// thread reads only its own group and writes only its own group's m output bytes: no
// communication, no race. Index arithmetic within a chunk is 32-bit (a chunk's groups), 64-bit for
// the chunk's base.
//   S == 1 (Linear, rows, 1x1 conv): the group is m consecutive elements. For m = 4 and m = 8 the
//     thread loads them as 16-byte vectors (4 float32 / 2 float64 each, when the weight's address
//     is 16-byte aligned) and stores its m mask bytes as one 4- or 8-byte word (when the mask's
//     address allows it): consecutive threads touch consecutive 16-byte pieces, fully coalesced.
//   S > 1 (conv along I): consecutive threads take consecutive s of a row-group (stride-1 addresses
//     for each l); a thread's m loads are strided by S and all issued before the ranks are computed.
//   other m (any m >= 1): the group is re-read from memory for each element (m^2 loads, served by
//     the L1 cache).

#include "common.cuh"

#define NM_CHUNK_GROUPS 2048                // groups per chunk (8 per thread at 256 threads)

template <typename T> struct NmVec;         // a 16-byte vector of T and its elements
template <> struct NmVec<float> {
    typedef float4 V; enum { N = 4 };
    static __device__ __forceinline__ float at(const V& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }
};
template <> struct NmVec<double> {
    typedef double2 V; enum { N = 2 };
    static __device__ __forceinline__ double at(const V& v, int j) { return j == 0 ? v.x : v.y; }
};

// the keep bits of a group of M magnitudes a[0..M-1] (bit l = element l kept)
template <typename T, int M>
__device__ __forceinline__ u32 keep_bits(const T* a, int n)
{
    u32 bits = 0u;
#pragma unroll
    for (int l = 0; l < M; ++l) {
        int rank = 0;
#pragma unroll
        for (int q = 0; q < M; ++q) rank += (a[q] > a[l]) || (a[q] == a[l] && q < l);
        bits |= (rank < n ? 1u : 0u) << l;
    }
    return bits;
}

// groups of M consecutive elements (S == 1), M in {4, 8}
template <typename T, int M>
__device__ __forceinline__ void nm_rows_fixed(const T* __restrict__ w, u8* __restrict__ out, i64 g0, int ng, int n,
                                              int* __restrict__ bad)
{
    typedef NmVec<T> X;
    const bool vin = (reinterpret_cast<unsigned long long>(w) & 15ull) == 0;
    const bool vout = (reinterpret_cast<unsigned long long>(out + g0 * M) & (M - 1)) == 0;
    for (int j = threadIdx.x; j < ng; j += blockDim.x) {
        const i64 base = (g0 + j) * M;
        T a[M];
        if (vin) {
            const typename X::V* p = reinterpret_cast<const typename X::V*>(w + base);
#pragma unroll
            for (int v = 0; v < M / X::N; ++v) {
                const typename X::V x = __ldg(p + v);
#pragma unroll
                for (int e = 0; e < X::N; ++e) a[v * X::N + e] = abs_t(X::at(x, e));
            }
        } else {
#pragma unroll
            for (int l = 0; l < M; ++l) a[l] = abs_t(w[base + l]);
        }
        bool fin = true;
#pragma unroll
        for (int l = 0; l < M; ++l) fin = fin && finite_abs(a[l]);
        if (!fin && bad != nullptr) *bad = 1;
        const u32 bits = keep_bits<T, M>(a, n);
        if (vout) {
            u64 word = 0ull;                        // byte l = keep bit l (little-endian)
#pragma unroll
            for (int l = 0; l < M; ++l) word |= (u64)((bits >> l) & 1u) << (8 * l);
            if (M == 4) __stwb(reinterpret_cast<u32*>(out + base), (u32)word);
            else __stwb(reinterpret_cast<u64*>(out + base), word);
        } else {
#pragma unroll
            for (int l = 0; l < M; ++l) out[base + l] = (u8)((bits >> l) & 1u);
        }
    }
}

// groups strided by S (conv along I), M in {4, 8}; the chunk starts at group g0 = q0 * S + s0
template <typename T, int M>
__device__ __forceinline__ void nm_strided_fixed(const T* __restrict__ w, u8* __restrict__ out, i64 g0, int ng,
                                                 int n, int S, int* __restrict__ bad)
{
    const i64 q0 = g0 / S;
    const int s0 = (int)(g0 - q0 * S);
    for (int j = threadIdx.x; j < ng; j += blockDim.x) {
        const int t = s0 + j;
        const i64 base = (q0 + t / S) * (i64)M * S + t % S;
        T a[M];
#pragma unroll
        for (int l = 0; l < M; ++l) a[l] = abs_t(w[base + (i64)l * S]);
        bool fin = true;
#pragma unroll
        for (int l = 0; l < M; ++l) fin = fin && finite_abs(a[l]);
        if (!fin && bad != nullptr) *bad = 1;
        const u32 bits = keep_bits<T, M>(a, n);
#pragma unroll
        for (int l = 0; l < M; ++l) out[base + (i64)l * S] = (u8)((bits >> l) & 1u);
    }
}

// any m and S: each element's rank from m loads of its group
template <typename T>
__device__ __forceinline__ void nm_any(const T* __restrict__ w, u8* __restrict__ out, i64 g0, int ng, int n, int m,
                                       int S, int* __restrict__ bad)
{
    const i64 q0 = g0 / S;
    const int s0 = (int)(g0 - q0 * S);
    for (int j = threadIdx.x; j < ng; j += blockDim.x) {
        const int t = s0 + j;
        const i64 base = (q0 + t / S) * (i64)m * S + t % S;
        for (int l = 0; l < m; ++l) {
            const T al = abs_t(w[base + (i64)l * S]);
            if (!finite_abs(al) && bad != nullptr) *bad = 1;
            int rank = 0;
            for (int q = 0; q < m && rank < n; ++q) {
                const T aq = abs_t(w[base + (i64)q * S]);
                rank += (aq > al) || (aq == al && q < l);
            }
            out[base + (i64)l * S] = rank < n ? 1 : 0;
        }
    }
}

template <typename T>
__device__ __forceinline__ void nm_masks_impl(
    const i64* __restrict__ w_ptrs, u8* __restrict__ out, const i64* __restrict__ out_off,
    const i64* __restrict__ strides, const i64* __restrict__ n_groups, const int* __restrict__ chunk_tensor,
    const i64* __restrict__ chunk_group, i64 n_chunks, int n, int m, int* __restrict__ bad)
{
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int t = chunk_tensor[c];
        if (w_ptrs[t] == 0) continue;               // block-uniform: a tensor of another dtype's launch
        const i64 g0 = chunk_group[c];
        const i64 left = n_groups[t] - g0;
        const int ng = (int)(left < NM_CHUNK_GROUPS ? left : NM_CHUNK_GROUPS);
        const T* w = reinterpret_cast<const T*>(w_ptrs[t]);
        u8* o = out + out_off[t];
        const int S = (int)strides[t];
        if (S == 1 && m == 4) nm_rows_fixed<T, 4>(w, o, g0, ng, n, bad);
        else if (S == 1 && m == 8) nm_rows_fixed<T, 8>(w, o, g0, ng, n, bad);
        else if (m == 4) nm_strided_fixed<T, 4>(w, o, g0, ng, n, S, bad);
        else if (m == 8) nm_strided_fixed<T, 8>(w, o, g0, ng, n, S, bad);
        else nm_any<T>(w, o, g0, ng, n, m, S, bad);
    }
}

extern "C" __global__ void nm_masks_f32(const i64* w_ptrs, u8* out, const i64* out_off, const i64* strides,
                                        const i64* n_groups, const int* chunk_tensor, const i64* chunk_group,
                                        i64 n_chunks, int n, int m, int* bad)
{
    nm_masks_impl<float>(w_ptrs, out, out_off, strides, n_groups, chunk_tensor, chunk_group, n_chunks, n, m, bad);
}

extern "C" __global__ void nm_masks_f64(const i64* w_ptrs, u8* out, const i64* out_off, const i64* strides,
                                        const i64* n_groups, const int* chunk_tensor, const i64* chunk_group,
                                        i64 n_chunks, int n, int m, int* bad)
{
    nm_masks_impl<double>(w_ptrs, out, out_off, strides, n_groups, chunk_tensor, chunk_group, n_chunks, n, m, bad);
}

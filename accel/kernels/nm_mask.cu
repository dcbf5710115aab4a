// nm_mask.cu -- N:M mask along the GEMM reduction dimension (twin: reference/masks.py nm_mask).
//
// What it computes. The weight is viewed as [O, I, S] (C order): Linear [O, I] has S = 1; Conv
// [O, I, kh, kw] along the reduction axis has S = kh*kw (the reference permutes to channels-last
// [O, kh, kw, I] and groups m consecutive input channels at each (o, kh, kw)); axis="rows" is
// [O, I*kh*kw] with S = 1. Group (o, j, s), j < I/m, holds the m elements
//     w[o, j*m + l, s],  l = 0..m-1,   at flat index ((o*I + j*m + l) * S + s).
// In each group the n largest |w| are kept, ties -> smaller l (the reference's stable argsort of
// -|w| within the group). Equivalently element l is kept iff
//     rank(l) = #{ l' : |w_l'| > |w_l|  or  (|w_l'| == |w_l| and l' < l) }  <  n,
// which is what each thread evaluates: the ranks are a permutation of 0..m-1 (a strict total order
// on (−|w|, l)), so exactly n elements per group are kept, the same n as the stable sort keeps.
//
// One thread per group (grid-stride over groups, 64-bit indices); a thread reads only its own
// group and writes only its own group's m output bytes: no communication, no race. Consecutive
// threads take consecutive s (stride-1 addresses for conv weights), then consecutive groups.
// M = 4 and M = 8 (2:4 / n:4 sparse tensor cores, n:8) keep the group in registers with unrolled
// compile-time indices; other m (any m >= 1) re-read the group (m^2 loads, served by L1).
// |w| for finite w is exact; the host rejects NaN/inf (as_real_tensor) before launching.

#include "common.cuh"

__device__ __forceinline__ void group_base(i64 g, i64 groups_per_row, i64 stride, int m, i64* base)
{
    const i64 s = g % stride;
    const i64 q = g / stride;
    const i64 j = q % groups_per_row;
    const i64 o = q / groups_per_row;
    *base = (o * groups_per_row * (i64)m + j * (i64)m) * stride + s;
}

template <typename T, int M>
__device__ __forceinline__ void nm_fixed_impl(const T* __restrict__ w, u8* __restrict__ out, i64 n_groups,
                                              int n, i64 groups_per_row, i64 stride)
{
    for (i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (i64)gridDim.x * blockDim.x) {
        i64 base;
        group_base(g, groups_per_row, stride, M, &base);
        T a[M];
#pragma unroll
        for (int l = 0; l < M; ++l) a[l] = abs_t(w[base + l * stride]);
#pragma unroll
        for (int l = 0; l < M; ++l) {
            int rank = 0;
#pragma unroll
            for (int q = 0; q < M; ++q) rank += (a[q] > a[l]) || (a[q] == a[l] && q < l);
            out[base + l * stride] = rank < n ? 1 : 0;
        }
    }
}

template <typename T>
__device__ __forceinline__ void nm_any_impl(const T* __restrict__ w, u8* __restrict__ out, i64 n_groups,
                                            int n, int m, i64 groups_per_row, i64 stride)
{
    for (i64 g = (i64)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (i64)gridDim.x * blockDim.x) {
        i64 base;
        group_base(g, groups_per_row, stride, m, &base);
        for (int l = 0; l < m; ++l) {
            const T al = abs_t(w[base + l * stride]);
            int rank = 0;
            for (int q = 0; q < m && rank < n; ++q) {
                const T aq = abs_t(w[base + q * stride]);
                rank += (aq > al) || (aq == al && q < l);
            }
            out[base + l * stride] = rank < n ? 1 : 0;
        }
    }
}

#define NM_FIXED(NAME, T, M) \
    extern "C" __global__ void NAME(const T* w, u8* out, i64 n_groups, int n, i64 groups_per_row, i64 stride) \
    { nm_fixed_impl<T, M>(w, out, n_groups, n, groups_per_row, stride); }

NM_FIXED(nm_mask_m4_f32, float, 4)
NM_FIXED(nm_mask_m4_f64, double, 4)
NM_FIXED(nm_mask_m8_f32, float, 8)
NM_FIXED(nm_mask_m8_f64, double, 8)

extern "C" __global__ void nm_mask_any_f32(const float* w, u8* out, i64 n_groups, int n, int m,
                                           i64 groups_per_row, i64 stride)
{
    nm_any_impl<float>(w, out, n_groups, n, m, groups_per_row, stride);
}

extern "C" __global__ void nm_mask_any_f64(const double* w, u8* out, i64 n_groups, int n, int m,
                                           i64 groups_per_row, i64 stride)
{
    nm_any_impl<double>(w, out, n_groups, n, m, groups_per_row, stride);
}

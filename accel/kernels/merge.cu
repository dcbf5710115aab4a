// merge.cu -- Sup-tickets running average and Sparse-Cocktail UMG channel scores, each for every
// tensor of a network in one launch.
//
// superpose_cia_{f32,f64} (twin: reference/merge.py superpose_cia, [ST] Eq. 4): for every tensor
//     out = (avg * (t - 1) + ticket) / t
// with t - 1 and t rounded to the dtype by the host (the reference's dtype.type(t - 1)), each
// operation rounded on its own (__fmul_rn, __fadd_rn, __fdiv_rn: no FMA), so equal to the
// reference bit for bit. Pointer tables for avg and ticket, the results end to end in one flat
// output (out + out_off[t]); chunk c -> tensor chunk_tensor[c], elements [chunk_start[c],
// min(+chunk_len, sizes[t])), one block per chunk (grid-stride); 16-byte loads and stores (4
// float32 / 2 float64) when the tensor's three addresses are 16-byte aligned (tested per tensor in
// the kernel), element by element at chunk edges and otherwise. No communication, no race; loads
// use the read-only path, so out must not alias avg or ticket (the host allocates it). The
// re-prune that follows the average (reference/merge.py reprune: per-layer or global magnitude
// top-k) runs on topk.cu.
//
// umg_channel_scores_{f32,f64} (twin: reference/cocktail_ops.py umg_channel_scores, [SC] §3.4):
// for every weight W viewed as [O, R] (R = I*kh*kw),
//     score[o] = beta * sum_r mask_u[o,r] |W[o,r]| + (1 - beta) * sum_r mask_nm[o,r] |W[o,r]|
// (mask_nm null = all ones). One warp per output channel: a block takes UMG_CHANNELS (one per
// warp) consecutive channels of one weight (chunk table: weight, first channel), grid-stride; the
// warp's lanes walk the row in 16-byte pieces (4 float32 / 2 float64 weights with their 4 / 2
// mask bytes as one 4- / 2-byte load) when the row's addresses allow it, else one element at a
// time. The two sums are accumulated in double and reduced with warp shuffles (no shared memory,
// no block barrier), rounded to the dtype, then combined with the host-rounded beta and 1 - beta;
// the scores of all weights end to end in one flat output. The reference sums in the dtype
// (NumPy's pairwise summation), so float32 results agree within the float32 tolerance, not bit for
// bit (float64: within a few ulps). Lane 0 of each warp writes only its own channel's score: no
// race. 64-bit indices. A thread that reads a NaN or inf weight sets *bad = 1 (when bad is given):
// the host's finiteness check without another pass over the weights.

#include "common.cuh"

#define UMG_CHANNELS 8                      // channels per block: one per warp of 256 threads

template <typename T>
__device__ __forceinline__ void cia_impl(
    const i64* __restrict__ avg_ptrs, const i64* __restrict__ x_ptrs, T* __restrict__ out,
    const i64* __restrict__ out_off, const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start,
    const i64* __restrict__ sizes, i64 n_chunks, i64 chunk_len, T t_minus_1, T t)
{
    typedef Vec16<T> X;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int k = chunk_tensor[c];
        const i64 lo = chunk_start[c];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[k] ? end : sizes[k];
        const T* A = reinterpret_cast<const T*>(avg_ptrs[k]);
        const T* B = reinterpret_cast<const T*>(x_ptrs[k]);
        T* O = out + out_off[k];
        const bool vec = aligned16(A) && aligned16(B) && aligned16(O);     // block-uniform
        const i64 glo = lo / X::N, ghi = (hi + X::N - 1) / X::N;
        for (i64 g = glo + threadIdx.x; g < ghi; g += blockDim.x) {
            const i64 i0 = g * X::N;
            if (vec && i0 >= lo && i0 + X::N <= hi) {
                const typename X::V a = __ldg(reinterpret_cast<const typename X::V*>(A) + g);
                const typename X::V b = __ldg(reinterpret_cast<const typename X::V*>(B) + g);
                typename X::V o;
#pragma unroll
                for (int j = 0; j < X::N; ++j)
                    X::set(o, j, div_rn(add_rn(mul_rn(X::get(a, j), t_minus_1), X::get(b, j)), t));
                __stwb(reinterpret_cast<typename X::V*>(O) + g, o);
            } else {
                for (int j = 0; j < X::N; ++j) {
                    const i64 i = i0 + j;
                    if (i >= lo && i < hi) O[i] = div_rn(add_rn(mul_rn(A[i], t_minus_1), B[i]), t);
                }
            }
        }
    }
}

extern "C" __global__ void superpose_cia_f32(
    const i64* avg, const i64* x, float* out, const i64* out_off, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, float t_minus_1, float t)
{
    cia_impl<float>(avg, x, out, out_off, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, t_minus_1, t);
}

extern "C" __global__ void superpose_cia_f64(
    const i64* avg, const i64* x, double* out, const i64* out_off, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, double t_minus_1, double t)
{
    cia_impl<double>(avg, x, out, out_off, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, t_minus_1, t);
}

// the VEC mask bytes of a 16-byte group of T as one integer (4 float32 -> 4 bytes, 2 float64 -> 2)
template <typename T> struct MaskWord;
template <> struct MaskWord<float> { typedef u32 W; };
template <> struct MaskWord<double> { typedef unsigned short W; };

template <typename T>
__device__ __forceinline__ void umg_impl(
    const i64* __restrict__ w_ptrs, const i64* __restrict__ mu_ptrs, const i64* __restrict__ mnm_ptrs,
    T* __restrict__ out, const i64* __restrict__ out_off, const i64* __restrict__ rows,
    const i64* __restrict__ n_out, const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_o0,
    i64 n_chunks, T beta, T one_minus_beta, int* __restrict__ bad)
{
    typedef Vec16<T> X;
    typedef typename MaskWord<T>::W MW;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int k = chunk_tensor[c];
        const i64 o = chunk_o0[c] + warp;
        if (o >= n_out[k]) continue;                // warp-uniform: the last chunk of a weight
        const i64 R = rows[k];
        const T* w = reinterpret_cast<const T*>(w_ptrs[k]) + o * R;
        const u8* mu = reinterpret_cast<const u8*>(mu_ptrs[k]) + o * R;
        const u8* mnm = mnm_ptrs[k] == 0 ? nullptr : reinterpret_cast<const u8*>(mnm_ptrs[k]) + o * R;
        double su = 0.0, snm = 0.0;
        bool fin = true;
        const bool vec = aligned16(w) && (reinterpret_cast<unsigned long long>(mu) % X::N) == 0
                         && (mnm == nullptr || (reinterpret_cast<unsigned long long>(mnm) % X::N) == 0);
        const i64 nv = vec ? R / X::N : 0;          // whole 16-byte groups, then the rest one by one
        for (i64 g = lane; g < nv; g += 32) {
            const typename X::V x = __ldg(reinterpret_cast<const typename X::V*>(w) + g);
            const u32 bu = (u32)__ldg(reinterpret_cast<const MW*>(mu) + g);
            const u32 bn = mnm == nullptr ? 0xffffffffu : (u32)__ldg(reinterpret_cast<const MW*>(mnm) + g);
#pragma unroll
            for (int j = 0; j < X::N; ++j) {
                const T a = abs_t(X::get(x, j));
                fin = fin && finite_abs(a);
                if ((bu >> (8 * j)) & 0xffu) su += (double)a;
                if ((bn >> (8 * j)) & 0xffu) snm += (double)a;
            }
        }
        for (i64 r = nv * X::N + lane; r < R; r += 32) {
            const T a = abs_t(w[r]);
            fin = fin && finite_abs(a);
            if (mu[r]) su += (double)a;
            if (mnm == nullptr || mnm[r]) snm += (double)a;
        }
        if (!fin && bad != nullptr) *bad = 1;
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) {
            su += __shfl_down_sync(0xffffffffu, su, d);
            snm += __shfl_down_sync(0xffffffffu, snm, d);
        }
        if (lane == 0) out[out_off[k] + o] = add_rn(mul_rn(beta, (T)su), mul_rn(one_minus_beta, (T)snm));
    }
}

extern "C" __global__ void umg_channel_scores_f32(
    const i64* w, const i64* mask_u, const i64* mask_nm, float* out, const i64* out_off, const i64* rows,
    const i64* n_out, const int* chunk_tensor, const i64* chunk_o0, i64 n_chunks, float beta, float one_minus_beta,
    int* bad)
{
    umg_impl<float>(w, mask_u, mask_nm, out, out_off, rows, n_out, chunk_tensor, chunk_o0, n_chunks, beta,
                    one_minus_beta, bad);
}

extern "C" __global__ void umg_channel_scores_f64(
    const i64* w, const i64* mask_u, const i64* mask_nm, double* out, const i64* out_off, const i64* rows,
    const i64* n_out, const int* chunk_tensor, const i64* chunk_o0, i64 n_chunks, double beta,
    double one_minus_beta, int* bad)
{
    umg_impl<double>(w, mask_u, mask_nm, out, out_off, rows, n_out, chunk_tensor, chunk_o0, n_chunks, beta,
                     one_minus_beta, bad);
}

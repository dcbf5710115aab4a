// merge.cu -- Sup-tickets running average and Sparse-Cocktail UMG channel scores.
//
// superpose_cia_{f32,f64} (twin: reference/merge.py superpose_cia, [ST] Eq. 4): for every tensor of
// the network in one launch (multi-tensor tables as in masked_sgd.cu),
//     out = (avg * (t - 1) + ticket) / t
// with t - 1 and t rounded to the dtype by the host (the reference's dtype.type(t - 1)), each
// operation rounded on its own (__fmul_rn, __fadd_rn, __fdiv_rn: no FMA), so equal to the
// reference bit for bit. out may alias avg (in-place running average): each thread reads its
// element before writing it and no two threads share an element. The re-prune that follows the
// average (reference/merge.py reprune: per-layer or global magnitude top-k) runs on topk.cu.
//
// umg_channel_scores_{f32,f64} (twin: reference/cocktail_ops.py umg_channel_scores, [SC] §3.4):
// for W viewed as [O, R] (R = I*kh*kw),
//     score[o] = beta * sum_r mask_u[o,r] |W[o,r]| + (1 - beta) * sum_r mask_nm[o,r] |W[o,r]|
// (mask_nm null = all ones). One block per output channel (grid-stride over channels); the two
// sums are accumulated in double by a block reduction (shuffles, then one shared slot per warp) and
// rounded to the dtype, then combined with the host-rounded beta and 1 - beta. The reference sums
// in the dtype (NumPy's pairwise summation), so float32 results agree within the float32
// tolerance, not bit for bit (float64: within a few ulps). Each block writes only score[o] of its
// own channel: no race. 64-bit indices.

#include "common.cuh"

template <typename T>
__device__ __forceinline__ void cia_impl(
    const i64* __restrict__ avg_ptrs, const i64* __restrict__ x_ptrs, const i64* __restrict__ out_ptrs,
    const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start, const i64* __restrict__ sizes,
    i64 n_chunks, i64 chunk_len, T t_minus_1, T t)
{
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int k = chunk_tensor[c];
        const i64 lo = chunk_start[c];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[k] ? end : sizes[k];
        const T* A = reinterpret_cast<const T*>(avg_ptrs[k]);
        const T* X = reinterpret_cast<const T*>(x_ptrs[k]);
        T* O = reinterpret_cast<T*>(out_ptrs[k]);
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x)
            O[i] = div_rn(add_rn(mul_rn(A[i], t_minus_1), X[i]), t);
    }
}

extern "C" __global__ void superpose_cia_f32(
    const i64* avg, const i64* x, const i64* out, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, float t_minus_1, float t)
{
    cia_impl<float>(avg, x, out, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, t_minus_1, t);
}

extern "C" __global__ void superpose_cia_f64(
    const i64* avg, const i64* x, const i64* out, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, double t_minus_1, double t)
{
    cia_impl<double>(avg, x, out, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, t_minus_1, t);
}

// sum of one double per thread over the block; every thread must call it; result valid in all threads
__device__ __forceinline__ double block_sum(double v, double* warp_part)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_part[warp] = v;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < nwarps; ++w) tot += warp_part[w];
    __syncthreads();                                // warp_part is reused by the next call
    return tot;
}

template <typename T>
__device__ __forceinline__ void umg_impl(const T* __restrict__ w, const u8* __restrict__ mask_u,
                                         const u8* __restrict__ mask_nm, T* __restrict__ score,
                                         i64 n_out, i64 row, T beta, T one_minus_beta)
{
    __shared__ double part[32];
    for (i64 o = blockIdx.x; o < n_out; o += gridDim.x) {
        double su = 0.0, snm = 0.0;
        for (i64 r = threadIdx.x; r < row; r += blockDim.x) {
            const i64 i = o * row + r;
            const double a = (double)abs_t(w[i]);
            if (mask_u[i]) su += a;
            if (mask_nm == nullptr || mask_nm[i]) snm += a;
        }
        su = block_sum(su, part);
        snm = block_sum(snm, part);
        if (threadIdx.x == 0)
            score[o] = add_rn(mul_rn(beta, (T)su), mul_rn(one_minus_beta, (T)snm));
    }
}

extern "C" __global__ void umg_channel_scores_f32(const float* w, const u8* mask_u, const u8* mask_nm, float* score,
                                                  i64 n_out, i64 row, float beta, float one_minus_beta)
{
    umg_impl<float>(w, mask_u, mask_nm, score, n_out, row, beta, one_minus_beta);
}

extern "C" __global__ void umg_channel_scores_f64(const double* w, const u8* mask_u, const u8* mask_nm, double* score,
                                                  i64 n_out, i64 row, double beta, double one_minus_beta)
{
    umg_impl<double>(w, mask_u, mask_nm, score, n_out, row, beta, one_minus_beta);
}

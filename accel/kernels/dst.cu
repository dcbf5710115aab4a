// dst.cu -- DST-EE acquisition scores for every layer in one launch (twin: reference/dst.py
// dst_ee_scores, [EE] Eq. 1). The drop and grow selections of SET / RigL / DST-EE themselves are
// the segmented exact top-k of topk.cu (drop: keep the top n_active - k drop scores among the
// active weights; grow: the top k grow scores among the positions inactive after the drop,
// written as kept | grown by topk_select's or_with); this file holds the elementwise part.
//
// What it computes, per element of layer t (g: dense gradient, N: int64 activation counter):
//     form 0 ("eq1"):  S = |g| + (c * ln t) / (N + eps)
//     form 1 ("text"): S = |g| + ln t / (N + c)
// in the gradient's dtype, in the reference's operation order with every operation rounded on its
// own (__fmul_rn, __fdiv_rn, __fadd_rn: no FMA contraction), N converted to the dtype with
// round-to-nearest like NumPy's astype; the host passes c, ln t and eps already rounded to the
// dtype (the reference's dtype.type(...)). So the scores equal the reference's bit for bit.
//
// Layout: multi-tensor tables as in masked_sgd.cu (int64 pointers g, N, out per layer; chunk c ->
// layer chunk_tensor[c], elements [chunk_start[c], min(+chunk_len, sizes[t]))). One thread per
// element, no communication, no race; 64-bit indices.

#include "common.cuh"

template <typename T>
__device__ __forceinline__ void dst_ee_impl(
    const i64* __restrict__ g_ptrs, const i64* __restrict__ n_ptrs, const i64* __restrict__ out_ptrs,
    const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start, const i64* __restrict__ sizes,
    i64 n_chunks, i64 chunk_len, T c, T lnt, T eps, int form)
{
    const T c_lnt = mul_rn(c, lnt);
    for (i64 ch = blockIdx.x; ch < n_chunks; ch += gridDim.x) {
        const int t = chunk_tensor[ch];
        const i64 lo = chunk_start[ch];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[t] ? end : sizes[t];
        const T* G = reinterpret_cast<const T*>(g_ptrs[t]);
        const i64* N = reinterpret_cast<const i64*>(n_ptrs[t]);
        T* O = reinterpret_cast<T*>(out_ptrs[t]);
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            const T nf = to_t(N[i], T(0));
            const T bonus = form == 0 ? div_rn(c_lnt, add_rn(nf, eps)) : div_rn(lnt, add_rn(nf, c));
            O[i] = add_rn(abs_t(G[i]), bonus);
        }
    }
}

extern "C" __global__ void dst_ee_scores_f32(
    const i64* g, const i64* n, const i64* out, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, float c, float lnt, float eps, int form)
{
    dst_ee_impl<float>(g, n, out, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, c, lnt, eps, form);
}

extern "C" __global__ void dst_ee_scores_f64(
    const i64* g, const i64* n, const i64* out, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, double c, double lnt, double eps, int form)
{
    dst_ee_impl<double>(g, n, out, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, c, lnt, eps, form);
}

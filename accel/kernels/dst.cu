// dst.cu -- DST-EE acquisition scores for every layer in one launch (twin: reference/dst.py
// dst_ee_scores, [EE] Eq. 1). The drop and grow selections of SET / RigL / DST-EE themselves are
// the segmented exact top-k of topk.cu (drop: keep the top n_active - k drop scores among the
// active weights; grow: the top k grow scores among the positions inactive after the drop,
// written as kept | grown by the or_with form); this file holds the elementwise part.
//
// What it computes, per element of layer t (g: dense gradient, N: int64 activation counter):
//     form 0 ("eq1"):  S = |g| + (c * ln t) / (N + eps)
//     form 1 ("text"): S = |g| + ln t / (N + c)
// in the gradient's dtype, in the reference's operation order with every operation rounded on its
// own (__fmul_rn, __fdiv_rn, __fadd_rn: no FMA contraction), N converted to the dtype with
// round-to-nearest like NumPy's astype; the host passes c, ln t and eps already rounded to the
// dtype (the reference's dtype.type(...)). So the scores equal the reference's bit for bit.
//
// Layout: a pointer table for g and for N (int64 per layer), the scores of every layer end to end
// in one flat output (out + out_off[t]); chunk c -> layer chunk_tensor[c], elements
// [chunk_start[c], min(+chunk_len, sizes[t])), one block per chunk (grid-stride). A thread takes
// 16-byte pieces: 4 float32 (or 2 float64) gradients, their 4 (2) counters as two (one) 16-byte
// loads, and stores 4 (2) scores as one 16-byte store, whenever the layer's three addresses are
// 16-byte aligned (tested in the kernel, per layer); elements at the chunk's edges and layers off
// that alignment go one by one. One thread per element, no communication, no race; the loads use
// the read-only path (__ldg), so the output must not alias the inputs (the host allocates it).

#include "common.cuh"

template <typename T>
__device__ __forceinline__ T dst_ee_one(T g, i64 n, T c, T lnt, T eps, T c_lnt, int form)
{
    const T nf = to_t(n, T(0));
    const T bonus = form == 0 ? div_rn(c_lnt, add_rn(nf, eps)) : div_rn(lnt, add_rn(nf, c));
    return add_rn(abs_t(g), bonus);
}

template <typename T>
__device__ __forceinline__ void dst_ee_impl(
    const i64* __restrict__ g_ptrs, const i64* __restrict__ n_ptrs, T* __restrict__ out,
    const i64* __restrict__ out_off, const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start,
    const i64* __restrict__ sizes, i64 n_chunks, i64 chunk_len, T c, T lnt, T eps, int form)
{
    typedef Vec16<T> X;
    const T c_lnt = mul_rn(c, lnt);
    for (i64 ch = blockIdx.x; ch < n_chunks; ch += gridDim.x) {
        const int t = chunk_tensor[ch];
        const i64 lo = chunk_start[ch];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[t] ? end : sizes[t];
        const T* G = reinterpret_cast<const T*>(g_ptrs[t]);
        const i64* N = reinterpret_cast<const i64*>(n_ptrs[t]);
        T* O = out + out_off[t];
        const bool vec = aligned16(G) && aligned16(N) && aligned16(O);     // block-uniform
        const i64 glo = lo / X::N, ghi = (hi + X::N - 1) / X::N;
        for (i64 g = glo + threadIdx.x; g < ghi; g += blockDim.x) {
            const i64 i0 = g * X::N;
            if (vec && i0 >= lo && i0 + X::N <= hi) {
                const typename X::V gv = __ldg(reinterpret_cast<const typename X::V*>(G) + g);
                i64 nv[X::N];
#pragma unroll
                for (int h = 0; h < X::N / 2; ++h) {            // two int64 counters per 16 bytes
                    const ulonglong2 p = __ldg(reinterpret_cast<const ulonglong2*>(N + i0) + h);
                    nv[2 * h] = (i64)p.x;
                    nv[2 * h + 1] = (i64)p.y;
                }
                typename X::V ov;
#pragma unroll
                for (int j = 0; j < X::N; ++j) X::set(ov, j, dst_ee_one(X::get(gv, j), nv[j], c, lnt, eps, c_lnt, form));
                __stwb(reinterpret_cast<typename X::V*>(O) + g, ov);
            } else {
                for (int j = 0; j < X::N; ++j) {
                    const i64 i = i0 + j;
                    if (i >= lo && i < hi) O[i] = dst_ee_one(G[i], N[i], c, lnt, eps, c_lnt, form);
                }
            }
        }
    }
}

extern "C" __global__ void dst_ee_scores_f32(
    const i64* g, const i64* n, float* out, const i64* out_off, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, float c, float lnt, float eps, int form)
{
    dst_ee_impl<float>(g, n, out, out_off, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, c, lnt, eps, form);
}

extern "C" __global__ void dst_ee_scores_f64(
    const i64* g, const i64* n, double* out, const i64* out_off, const int* chunk_tensor, const i64* chunk_start,
    const i64* sizes, i64 n_chunks, i64 chunk_len, double c, double lnt, double eps, int form)
{
    dst_ee_impl<double>(g, n, out, out_off, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, c, lnt, eps, form);
}

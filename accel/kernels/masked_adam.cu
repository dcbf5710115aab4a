// masked_adam.cu -- fused masked Adam / AdamW step over every tensor of a model in ONE launch
// (twin: reference/optim.py masked_adam_step; the torch.optim.Adam / AdamW update).
//
// What it computes, per element i of tensor t (m = mask, 1 where the weight is active; a tensor
// without a mask -- bias, BN affine -- has m = 1 everywhere; s = *step[t], the step count already
// advanced by the host for this iteration, as torch's fused Adam does):
//
//     d    = m ? g : 0                 (masked gradient; divided by *grad_scale when given, negated
//                                       when `maximize`)
//     AdamW (decoupled):  w = w * (1 - lr * weight_decay)     (host-rounded factor)
//     Adam (L2):          d = d + weight_decay * w
//     a    = beta1 * a + (1 - beta1) * d
//     b    = beta2 * b + (1 - beta2) * (d * d)
//     bmax = max(bmax, b)                                      (amsgrad only)
//     bc1  = 1 - beta1^s,  bc2 = 1 - beta2^s                   (double, then the step size
//     step_size = T(lr / bc1),  bc2_sqrt = T(sqrt(bc2))         and sqrt(bc2) rounded to T)
//     w    = w - step_size * (a / (sqrt(amsgrad ? bmax : b) / bc2_sqrt + eps))
//     off the mask: w, a, b, bmax are written as 0
//
// With the weight and every moment zero off the mask and the gradient masked, each term of the
// update is exactly zero there, so nothing is revived; the select-writes make that hold even for
// state that was not zero before. Every product, sum, quotient and square root is rounded on its
// own (the *_rn helpers: no FMA), in the reference's order, so the result is the reference's within
// the last bit of the two pow() calls (the bias corrections), which the host and the GPU libraries
// may round differently.
//
// found_inf given and *found_inf != 0: every thread returns at once, nothing is written (the step
// is skipped on the device; the host undoes its step-count increment with found_inf, as torch does).
//
// Layout: multi-tensor tables as in masked_sgd.cu (raw int64 pointers per tensor: w, g, mask
// (uint8, 0 = none), a, b, bmax (0 unless amsgrad), step (float32 scalar per tensor); a chunk
// table). One element per thread per iteration, no communication, no race; 64-bit indices. w, a,
// b and bmax are updated in place: each thread reads element i before writing element i.
//
// Bytes per element (float32, no amsgrad): read w, g, a, b (16) + mask (1), write w, a, b (12) = 29 B,
// against 28 B for a dense fused Adam step.

#include "common.cuh"

__device__ __forceinline__ float  sqrt_rn(float x)  { return __fsqrt_rn(x); }
__device__ __forceinline__ double sqrt_rn(double x) { return __dsqrt_rn(x); }
__device__ __forceinline__ float  max_t(float a, float b)   { return a > b ? a : b; }
__device__ __forceinline__ double max_t(double a, double b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ void masked_adam_impl(
    const i64* __restrict__ w_ptrs, const i64* __restrict__ g_ptrs, const i64* __restrict__ m_ptrs,
    const i64* __restrict__ a_ptrs, const i64* __restrict__ b_ptrs, const i64* __restrict__ bmax_ptrs,
    const i64* __restrict__ step_ptrs,
    const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start, const i64* __restrict__ sizes,
    i64 n_chunks, i64 chunk_len,
    double lr, double beta1, double beta2, T weight_decay, T eps, T decay_factor, int amsgrad, int decoupled,
    int maximize, const float* __restrict__ found_inf, const float* __restrict__ grad_scale)
{
    if (found_inf != nullptr && *found_inf != 0.0f) return;   // uniform over the grid: no barrier below
    const T zero = T(0);
    const T b1 = T(beta1), b2 = T(beta2);
    const T one_minus_b1 = T(1.0 - beta1), one_minus_b2 = T(1.0 - beta2);
    const T scale = grad_scale != nullptr ? T(*grad_scale) : T(1);
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int t = chunk_tensor[c];
        const i64 lo = chunk_start[c];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[t] ? end : sizes[t];
        T* W = reinterpret_cast<T*>(w_ptrs[t]);
        const T* G = reinterpret_cast<const T*>(g_ptrs[t]);
        const u8* M = reinterpret_cast<const u8*>(m_ptrs[t]);
        T* A = reinterpret_cast<T*>(a_ptrs[t]);
        T* B = reinterpret_cast<T*>(b_ptrs[t]);
        T* BM = reinterpret_cast<T*>(bmax_ptrs[t]);
        const double s = (double)*reinterpret_cast<const float*>(step_ptrs[t]);
        const T step_size = T(lr / (1.0 - pow(beta1, s)));
        const T bc2_sqrt = T(sqrt(1.0 - pow(beta2, s)));
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) {
            const bool keep = (M == nullptr) || (M[i] != 0);
            if (!keep) {
                W[i] = zero;
                A[i] = zero;
                B[i] = zero;
                if (amsgrad) BM[i] = zero;
                continue;
            }
            T w = W[i];
            T d = G[i];
            if (grad_scale != nullptr) d = div_rn(d, scale);
            if (maximize) d = -d;
            if (weight_decay != zero) {
                if (decoupled) w = mul_rn(w, decay_factor);
                else d = add_rn(d, mul_rn(weight_decay, w));
            }
            const T a = add_rn(mul_rn(b1, A[i]), mul_rn(one_minus_b1, d));
            const T b = add_rn(mul_rn(b2, B[i]), mul_rn(one_minus_b2, mul_rn(d, d)));
            A[i] = a;
            B[i] = b;
            T v = b;
            if (amsgrad) {
                v = max_t(BM[i], b);
                BM[i] = v;
            }
            const T denom = add_rn(div_rn(sqrt_rn(v), bc2_sqrt), eps);
            W[i] = sub_rn(w, mul_rn(step_size, div_rn(a, denom)));
        }
    }
}

extern "C" __global__ void masked_adam_f32(
    const i64* w, const i64* g, const i64* m, const i64* a, const i64* b, const i64* bmax, const i64* step,
    const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    double lr, double beta1, double beta2, float weight_decay, float eps, float decay_factor, int amsgrad,
    int decoupled, int maximize, const float* found_inf, const float* grad_scale)
{
    masked_adam_impl<float>(w, g, m, a, b, bmax, step, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len,
                            lr, beta1, beta2, weight_decay, eps, decay_factor, amsgrad, decoupled, maximize,
                            found_inf, grad_scale);
}

extern "C" __global__ void masked_adam_f64(
    const i64* w, const i64* g, const i64* m, const i64* a, const i64* b, const i64* bmax, const i64* step,
    const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    double lr, double beta1, double beta2, double weight_decay, double eps, double decay_factor, int amsgrad,
    int decoupled, int maximize, const float* found_inf, const float* grad_scale)
{
    masked_adam_impl<double>(w, g, m, a, b, bmax, step, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len,
                             lr, beta1, beta2, weight_decay, eps, decay_factor, amsgrad, decoupled, maximize,
                             found_inf, grad_scale);
}

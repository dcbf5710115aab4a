// masked_sgd.cu -- fused masked SGD(-momentum, weight decay, dampening, Nesterov) step over every
// tensor of a model in ONE launch (twin: reference/optim.py masked_sgd_step; PyTorch SGD convention).
//
// What it computes, per element i of tensor t (m = mask, 1 where the weight is active; a tensor
// without a mask -- bias, BN affine -- has m = 1 everywhere):
//
//     d    = m ? g : 0                          (masked gradient)
//     d    = d + weight_decay * w               (only if weight_decay != 0; L2 added to the gradient)
//     b    = buf_in ? momentum * buf_in + (1 - dampening) * d : d      (only if momentum != 0;
//                                                PyTorch: the first step's buffer is a copy of d)
//     d    = nesterov ? d + momentum * b : b
//     buf_out = m ? b : 0
//     w_out   = m ? w - lr * d : 0
//     g       = m ? g : 0                       (only if mask_grad: the in-place gradient masking
//                                                the torch path does with _foreach_mul_)
//
// Before the arithmetic, the gradient is divided by *grad_scale (when given: GradScaler's scale,
// as torch's fused optimizers take it) and negated when `maximize`. When `found_inf` is given and
// *found_inf != 0 (a non-finite gradient somewhere in the model, found by guard.cu or by
// GradScaler), every thread returns at once: the step is skipped on the device, nothing is
// written, and the host never has to look.
//
// This is term for term reference.optim.masked_sgd_step: the reference multiplies by the 0/1 mask,
// which on a finite value gives exactly +-0, and a select gives +0; the two compare equal. Every
// product and sum is rounded separately (__fmul_rn / __fadd_rn / __fsub_rn and the double forms),
// so no multiply-add is contracted into an FMA: each operation rounds like NumPy's per-ufunc
// arithmetic in the same dtype, and the result is the reference's (bit for bit when the host
// passes the same rounded scalars, which the loader does: T(lr), T(momentum), T(1 - dampening)).
//
// Layout ("multi-tensor apply"): the host passes device tables of raw pointers (int64) per tensor
// -- w_in, w_out, g, mask (uint8, 0 = none), buf_in (0 = none), buf_out (0 when momentum == 0) --
// and a chunk table: chunk c covers elements [chunk_start[c], min(chunk_start[c] + chunk_len,
// sizes[t])) of tensor t = chunk_tensor[c]. Blocks walk the chunks with a grid-stride loop and
// threads walk a chunk with a block-stride loop, so every element is visited by exactly one
// thread: there is no inter-thread communication at all, hence no race. w_out may equal w_in and
// buf_out may equal buf_in (in-place step): each thread reads element i before writing element i,
// and no thread touches another thread's element. Indices are 64-bit (tensors of more than 2^31
// elements are fine). A thread handles UNROLL elements per iteration, all loads first, so several
// independent loads are in flight (the pointers may alias, so the compiler cannot reorder them).
//
// Bytes per element (float32, momentum on, mask_grad off): read w, g, buf (12) + mask (1), write
// w, buf (8) = 21 B; a dense fused SGD-momentum step moves 20 B. The kernel is bandwidth-bound.

#include "common.cuh"

#define SGD_UNROLL 4

template <typename T>
__device__ __forceinline__ void masked_sgd_impl(
    const i64* __restrict__ w_in_ptrs, const i64* __restrict__ w_out_ptrs, const i64* __restrict__ g_ptrs,
    const i64* __restrict__ m_ptrs, const i64* __restrict__ buf_in_ptrs, const i64* __restrict__ buf_out_ptrs,
    const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start, const i64* __restrict__ sizes,
    i64 n_chunks, i64 chunk_len,
    T lr, T momentum, T weight_decay, T one_minus_dampening, int nesterov, int mask_grad,
    const float* __restrict__ found_inf, const float* __restrict__ grad_scale, int maximize)
{
    if (found_inf != nullptr && *found_inf != 0.0f) return;   // uniform over the grid: no barrier below
    const T zero = T(0);
    const T scale = grad_scale != nullptr ? T(*grad_scale) : T(1);
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int t = chunk_tensor[c];
        const i64 lo = chunk_start[c];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[t] ? end : sizes[t];
        const T* W = reinterpret_cast<const T*>(w_in_ptrs[t]);
        T* WO = reinterpret_cast<T*>(w_out_ptrs[t]);
        T* G = reinterpret_cast<T*>(g_ptrs[t]);
        const u8* M = reinterpret_cast<const u8*>(m_ptrs[t]);
        const T* B = reinterpret_cast<const T*>(buf_in_ptrs[t]);
        T* BO = reinterpret_cast<T*>(buf_out_ptrs[t]);
        const i64 step = (i64)blockDim.x;
        for (i64 base = lo + threadIdx.x; base < hi; base += SGD_UNROLL * step) {
            T w[SGD_UNROLL], g[SGD_UNROLL], b[SGD_UNROLL];
            bool keep[SGD_UNROLL];
#pragma unroll
            for (int u = 0; u < SGD_UNROLL; ++u) {
                const i64 i = base + u * step;
                if (i < hi) {
                    w[u] = W[i];
                    g[u] = G[i];
                    keep[u] = (M == nullptr) || (M[i] != 0);
                    b[u] = (momentum != zero && B != nullptr) ? B[i] : zero;
                }
            }
#pragma unroll
            for (int u = 0; u < SGD_UNROLL; ++u) {
                const i64 i = base + u * step;
                if (i < hi) {
                    T d = keep[u] ? g[u] : zero;
                    if (mask_grad && !keep[u]) G[i] = zero;
                    if (grad_scale != nullptr) d = div_rn(d, scale);
                    if (maximize) d = -d;
                    if (weight_decay != zero) d = add_rn(d, mul_rn(weight_decay, w[u]));
                    if (momentum != zero) {
                        const T nb = (B != nullptr) ? add_rn(mul_rn(momentum, b[u]), mul_rn(one_minus_dampening, d)) : d;
                        d = nesterov ? add_rn(d, mul_rn(momentum, nb)) : nb;
                        BO[i] = keep[u] ? nb : zero;
                    }
                    WO[i] = keep[u] ? sub_rn(w[u], mul_rn(lr, d)) : zero;
                }
            }
        }
    }
}

extern "C" __global__ void masked_sgd_f32(
    const i64* w_in, const i64* w_out, const i64* g, const i64* m, const i64* buf_in, const i64* buf_out,
    const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    float lr, float momentum, float weight_decay, float one_minus_dampening, int nesterov, int mask_grad,
    const float* found_inf, const float* grad_scale, int maximize)
{
    masked_sgd_impl<float>(w_in, w_out, g, m, buf_in, buf_out, chunk_tensor, chunk_start, sizes, n_chunks,
                           chunk_len, lr, momentum, weight_decay, one_minus_dampening, nesterov, mask_grad,
                           found_inf, grad_scale, maximize);
}

extern "C" __global__ void masked_sgd_f64(
    const i64* w_in, const i64* w_out, const i64* g, const i64* m, const i64* buf_in, const i64* buf_out,
    const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    double lr, double momentum, double weight_decay, double one_minus_dampening, int nesterov, int mask_grad,
    const float* found_inf, const float* grad_scale, int maximize)
{
    masked_sgd_impl<double>(w_in, w_out, g, m, buf_in, buf_out, chunk_tensor, chunk_start, sizes, n_chunks,
                            chunk_len, lr, momentum, weight_decay, one_minus_dampening, nesterov, mask_grad,
                            found_inf, grad_scale, maximize);
}

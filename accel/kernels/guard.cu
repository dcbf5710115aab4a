// guard.cu -- the Sparsifier's NaN/inf guard on the device: is any gradient of the model non-finite?
// (twin: the torch path of accel/step.py, torch._amp_foreach_non_finite_check_and_unscale_ with a
// unit scale; the decision it feeds is reference.optim's "a step with a non-finite gradient changes
// nothing".)
//
// nonfinite_check_{f32,f64}: every gradient of one dtype in one launch (multi-tensor tables as in
// masked_sgd.cu: raw int64 pointers per tensor and a chunk table). Each block reads its chunks
// once (4 B per float32 element, nothing written per element); a block that saw a NaN or inf sets
// *found = 1.0f. `found` is zeroed by the host before the first launch of the step, and the step
// kernels (masked_sgd.cu, masked_adam.cu) return at once when it is set, so a bad step changes
// nothing on the device without the host ever reading the flag.
//
// With `bookkeep` set (the last launch of the step), the last block to finish also keeps the
// step's record, so the host can report it later (at the next mask update, or when asked):
//     record = (bad steps, first bad iteration, iterations), float64 (exact below 2^53):
//     t = record[2] + 1;  record[2] = t;
//     if (*found) { if (record[0] == 0) record[1] = t;  record[0] += 1; }
// The iteration count lives on the device too, so a step replayed from a CUDA graph records the
// right iteration.
// The last block is found with the threadfence-reduction pattern: each block publishes its flag,
// issues __threadfence(), then increments *blocks_done; the block that sees gridDim.x - 1 is last
// and every other block's flag is visible to it. It resets *blocks_done to 0 for the next launch.
// Races: the flag is only ever set to the same value (1), and the counters are written by the one
// last block; launches are ordered on one stream.

#include "common.cuh"

__device__ __forceinline__ bool finite_t(float x)  { return isfinite(x); }
__device__ __forceinline__ bool finite_t(double x) { return isfinite(x); }

template <typename T>
__device__ __forceinline__ void nonfinite_impl(
    const i64* __restrict__ g_ptrs, const int* __restrict__ chunk_tensor, const i64* __restrict__ chunk_start,
    const i64* __restrict__ sizes, i64 n_chunks, i64 chunk_len, float* found, int bookkeep,
    unsigned int* blocks_done, double* record)
{
    __shared__ int any;
    if (threadIdx.x == 0) any = 0;
    __syncthreads();
    bool bad = false;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int t = chunk_tensor[c];
        const i64 lo = chunk_start[c];
        const i64 end = lo + chunk_len;
        const i64 hi = end < sizes[t] ? end : sizes[t];
        const T* G = reinterpret_cast<const T*>(g_ptrs[t]);
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x)
            if (!finite_t(G[i])) bad = true;
    }
    if (bad) any = 1;                                  // every writer writes the same value
    __syncthreads();
    if (threadIdx.x != 0) return;
    if (any) *found = 1.0f;
    if (!bookkeep) return;
    __threadfence();
    const unsigned int done = atomicAdd(blocks_done, 1u);
    if (done != gridDim.x - 1) return;
    *blocks_done = 0u;                                 // the last block: every flag is visible now
    const double t = record[2] + 1.0;
    record[2] = t;
    if (*(volatile float*)found != 0.0f) {
        if (record[0] == 0.0) record[1] = t;
        record[0] += 1.0;
    }
}

extern "C" __global__ void nonfinite_check_f32(
    const i64* g, const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    float* found, int bookkeep, unsigned int* blocks_done, double* record)
{
    nonfinite_impl<float>(g, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, found, bookkeep, blocks_done,
                          record);
}

extern "C" __global__ void nonfinite_check_f64(
    const i64* g, const int* chunk_tensor, const i64* chunk_start, const i64* sizes, i64 n_chunks, i64 chunk_len,
    float* found, int bookkeep, unsigned int* blocks_done, double* record)
{
    nonfinite_impl<double>(g, chunk_tensor, chunk_start, sizes, n_chunks, chunk_len, found, bookkeep, blocks_done,
                           record);
}

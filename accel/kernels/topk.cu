// topk.cu -- exact segmented top-k with the project's tie rule, by radix select (no sort).
// Twin: reference/topk.py topk_within (per segment); used for per-layer top-k (one segment per
// layer), global top-k (one segment over the concatenation), and the drop / grow selections of
// dynamic sparse training (candidates = active weights, or the inactive ones after the drop).
//
// Problem. A flat buffer of scores is cut into consecutive segments (layers). Segment s keeps
// exactly k_s of its candidate positions: larger score first, equal scores -> smaller flat index
// first (DESIGN.md tie rule). Candidates are given by a uint8 array (cand != 0, or == 0 when
// `invert`), or are all positions when the array pointer is null. Scores are finite (the host
// checks; a NaN is an error, never ranked) and 0 <= k_s <= #candidates of s (host-validated).
//
// Keys. Each float is mapped to an unsigned integer of the same width whose unsigned order is the
// float order: positive -> bits | signbit, negative -> ~bits; -0.0 is first folded onto +0.0 so
// that scores equal as floats have equal keys (as NumPy/torch comparisons treat them).
//
// Algorithm (MSD radix select, RADIX_BITS = 11 bits per pass; float32: 3 passes of 11/11/10 bits,
// float64: 6 passes of 11x5 + 9). Per segment the device keeps `prefix` (the key bits fixed so far)
// and `krem` (how many elements still to pick among the candidates whose key starts with prefix).
// Initially prefix = 0, krem = k_s.
//   topk_hist_*  : per chunk (a block), a shared-memory histogram of the current digit of every
//                  candidate whose higher key bits equal prefix; warp-aggregated shared atomics
//                  (__match_any_sync: one atomic per distinct digit per warp, so heavy ties do not
//                  serialize), then one global atomicAdd per non-empty bin into hist[s][digit].
//   topk_scan    : one block per segment (grid-stride) walks the 2^11 bins from the highest digit down
//                  (block-wide exclusive scan) and finds the digit d with
//                      above(d) < krem <= above(d) + hist[d],   above(d) = sum_{d' > d} hist[d'];
//                  every candidate with a larger digit is certainly among the top k_s, so
//                  prefix |= d << shift and krem -= above(d). It also zeroes the histogram for the
//                  next pass (each bin is read and then cleared by the one thread that owns it).
// Invariant: the k_s-th largest candidate key starts with prefix, and exactly k_s - krem candidates
// have a key greater than every key starting with prefix. After the last pass prefix == T, the key
// of the k_s-th largest candidate, #(key > T) = k_s - krem and 1 <= krem <= #(key == T).
//   topk_tie_count: per chunk, the number of candidates with key == T.
//   (host, on the same stream: exclusive prefix sum of the chunk tie counts within each segment)
//   topk_select  : per chunk, in flat-index order, a block-wide scan of the tie flags (warp ballots)
//                  gives each tied element its rank among the ties of its segment; it is kept iff
//                  rank < krem. So: keep = cand && (key > T || (key == T && tie_rank < krem)), which
//                  is exactly the first k_s entries of a stable sort by (-score, index) -- the
//                  reference's keep set. k_s = 0 (krem = 0 from the start) keeps nothing.
//                  Every output byte of every chunk is written (out = keep, or keep | or_with[i]
//                  when or_with is given: the grow step writes old-kept | grown directly).
// Races: within a launch, blocks only communicate through atomicAdd into hist (order-independent
// integer sums); prefix/krem are written only by topk_scan, in a launch of its own, by a single
// thread per segment after a barrier that follows every read of krem in that block. Launches are
// ordered on one stream. Indices are 64-bit throughout (segments and buffers beyond 2^31 elements).
// Cost: (passes + 2) reads of the scores (+ candidates), one write of the mask; launches:
// 2 * passes + 2 kernels + 3 small torch ops, independent of the number of segments.

#include "common.cuh"

#define RADIX_BITS 11
#define RADIX (1 << RADIX_BITS)
#define SCAN_THREADS 256
#define BINS_PER_THREAD (RADIX / SCAN_THREADS)

__device__ __forceinline__ u32 order_key(float x)
{
    u32 u = __float_as_uint(x);
    if (u == 0x80000000u) u = 0u;                               // -0.0 -> +0.0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ u64 order_key(double x)
{
    u64 u = (u64)__double_as_longlong(x);
    if (u == 0x8000000000000000ull) u = 0ull;                   // -0.0 -> +0.0
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

template <typename T> struct KeyOf;
template <> struct KeyOf<float>  { typedef u32 type; enum { bits = 32 }; };
template <> struct KeyOf<double> { typedef u64 type; enum { bits = 64 }; };

__device__ __forceinline__ bool is_candidate(const u8* cand, int invert, i64 i)
{
    return cand == nullptr || ((cand[i] != 0) != (invert != 0));
}

// mask of the key bits above the current digit (bits [hb, bits)); 0 when hb == bits
template <typename K>
__device__ __forceinline__ K high_mask(int hb, int bits)
{
    return hb >= bits ? K(0) : ~((K(1) << hb) - K(1));
}

// ------------------------------------------------------------------------------------- histogram
template <typename T>
__device__ __forceinline__ void hist_impl(
    const T* __restrict__ scores, const u8* __restrict__ cand, int invert,
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
    i64 n_chunks, const u64* __restrict__ prefix, const i64* __restrict__ krem, u64* __restrict__ hist,
    int shift, int width)
{
    typedef typename KeyOf<T>::type K;
    __shared__ u32 sh[RADIX];
    const K hmask = high_mask<K>(shift + width, KeyOf<T>::bits);
    const u32 dmask = (1u << width) - 1u;
    const int lane = threadIdx.x & 31;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int s = chunk_seg[c];
        if (krem[s] <= 0) continue;                 // block-uniform: nothing to pick in this segment
        for (int b = threadIdx.x; b < RADIX; b += blockDim.x) sh[b] = 0u;
        __syncthreads();
        const K pre = (K)prefix[s] & hmask;
        const i64 lo = chunk_start[c], hi = chunk_end[c];
        // the trip count is the same for every thread of the block, so whole warps reach the
        // __match_any_sync below together (threads past the end carry bin = -1)
        for (i64 base = lo; base < hi; base += blockDim.x) {
            const i64 i = base + threadIdx.x;
            int bin = -1;
            if (i < hi && is_candidate(cand, invert, i)) {
                const K key = order_key(scores[i]);
                if ((key & hmask) == pre) bin = (int)((key >> shift) & (K)dmask);
            }
            const u32 peers = __match_any_sync(0xffffffffu, bin);
            if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&sh[bin], (u32)__popc(peers));
        }
        __syncthreads();
        u64* h = hist + (i64)s * RADIX;
        for (int b = threadIdx.x; b < RADIX; b += blockDim.x) {
            const u32 v = sh[b];
            if (v) atomicAdd(&h[b], (u64)v);
        }
        __syncthreads();                            // sh is cleared for the next chunk only after this
    }
}

extern "C" __global__ void topk_hist_f32(
    const float* scores, const u8* cand, int invert, const int* chunk_seg, const i64* chunk_start,
    const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem, u64* hist, int shift, int width)
{
    hist_impl<float>(scores, cand, invert, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem, hist,
                     shift, width);
}

extern "C" __global__ void topk_hist_f64(
    const double* scores, const u8* cand, int invert, const int* chunk_seg, const i64* chunk_start,
    const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem, u64* hist, int shift, int width)
{
    hist_impl<double>(scores, cand, invert, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem, hist,
                      shift, width);
}

// ------------------------------------------------------------------------------------- scan
// Block-wide exclusive prefix sum of one u64 per thread (blockDim.x == SCAN_THREADS); contains
// barriers, so every thread of the block must call it.
__device__ __forceinline__ u64 block_exclusive_scan(u64 v, u64* warp_tot)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    u64 x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_tot[warp] = x;
    __syncthreads();
    u64 before = 0;
    for (int w = 0; w < warp; ++w) before += warp_tot[w];
    __syncthreads();
    return before + x - v;
}

// blocks of SCAN_THREADS threads, grid-stride over the segments (the loop is block-uniform, so
// every thread of a block meets the same barriers)
extern "C" __global__ void topk_scan(u64* hist, u64* prefix, i64* krem, int n_seg, int shift)
{
    __shared__ u64 warp_tot[SCAN_THREADS / 32];
    for (int s = blockIdx.x; s < n_seg; s += gridDim.x) {
        const i64 k = krem[s];                      // every thread reads krem before the barriers below
        u64* h = hist + (i64)s * RADIX;
        // thread j owns the bins of rank r = j*BINS_PER_THREAD + q in descending digit order
        u64 v[BINS_PER_THREAD];
        u64 tot = 0;
#pragma unroll
        for (int q = 0; q < BINS_PER_THREAD; ++q) {
            const int digit = RADIX - 1 - (threadIdx.x * BINS_PER_THREAD + q);
            v[q] = h[digit];
            h[digit] = 0ull;                        // cleared for the next pass (owner thread only)
            tot += v[q];
        }
        u64 run = block_exclusive_scan(tot, warp_tot);  // candidates in higher-digit bins of other threads
        if (k <= 0) continue;                       // block-uniform
        const u64 need = (u64)k;
#pragma unroll
        for (int q = 0; q < BINS_PER_THREAD; ++q) {
            // the intervals (run, run + v[q]] are disjoint over all bins: at most one thread matches
            if (run < need && need <= run + v[q]) {
                const u64 digit = (u64)(RADIX - 1 - (threadIdx.x * BINS_PER_THREAD + q));
                prefix[s] |= digit << shift;
                krem[s] = (i64)(need - run);
            }
            run += v[q];
        }
    }
}

// ------------------------------------------------------------------------------------- ties
template <typename T>
__device__ __forceinline__ void tie_count_impl(
    const T* __restrict__ scores, const u8* __restrict__ cand, int invert,
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
    i64 n_chunks, const u64* __restrict__ prefix, const i64* __restrict__ krem, i64* __restrict__ chunk_ties)
{
    typedef typename KeyOf<T>::type K;
    __shared__ i64 part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int s = chunk_seg[c];
        i64 cnt = 0;
        if (krem[s] > 0) {
            const K thr = (K)prefix[s];
            for (i64 i = chunk_start[c] + threadIdx.x; i < chunk_end[c]; i += blockDim.x)
                if (is_candidate(cand, invert, i) && order_key(scores[i]) == thr) ++cnt;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) cnt += __shfl_down_sync(0xffffffffu, cnt, o);
        if (lane == 0) part[warp] = cnt;
        __syncthreads();
        if (threadIdx.x == 0) {
            i64 tot = 0;
            for (int w = 0; w < nwarps; ++w) tot += part[w];
            chunk_ties[c] = tot;
        }
        __syncthreads();
    }
}

extern "C" __global__ void topk_tie_count_f32(
    const float* scores, const u8* cand, int invert, const int* chunk_seg, const i64* chunk_start,
    const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem, i64* chunk_ties)
{
    tie_count_impl<float>(scores, cand, invert, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem, chunk_ties);
}

extern "C" __global__ void topk_tie_count_f64(
    const double* scores, const u8* cand, int invert, const int* chunk_seg, const i64* chunk_start,
    const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem, i64* chunk_ties)
{
    tie_count_impl<double>(scores, cand, invert, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem, chunk_ties);
}

// ------------------------------------------------------------------------------------- select
// chunk_tie_base[c] = number of tied candidates (key == T) of the same segment in chunks before c
template <typename T>
__device__ __forceinline__ void select_impl(
    const T* __restrict__ scores, const u8* __restrict__ cand, int invert, const u8* __restrict__ or_with,
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
    i64 n_chunks, const u64* __restrict__ prefix, const i64* __restrict__ krem,
    const i64* __restrict__ chunk_tie_base, u8* __restrict__ out)
{
    typedef typename KeyOf<T>::type K;
    __shared__ int warp_cnt[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    const u32 lt_mask = (1u << lane) - 1u;
    for (i64 c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int s = chunk_seg[c];
        const i64 k = krem[s];
        const K thr = (K)prefix[s];
        const i64 lo = chunk_start[c], hi = chunk_end[c];
        i64 running = chunk_tie_base[c];            // block-uniform
        for (i64 base = lo; base < hi; base += blockDim.x) {
            const i64 i = base + threadIdx.x;
            const bool valid = i < hi;
            const bool ok = valid && k > 0 && is_candidate(cand, invert, i);
            const K key = ok ? order_key(scores[i]) : K(0);
            const bool tie = ok && key == thr;
            const u32 bal = __ballot_sync(0xffffffffu, tie);
            if (lane == 0) warp_cnt[warp] = __popc(bal);
            __syncthreads();
            int woff = 0, tile = 0;
            for (int w = 0; w < nwarps; ++w) {
                const int x = warp_cnt[w];
                if (w < warp) woff += x;
                tile += x;
            }
            __syncthreads();                        // warp_cnt is rewritten by the next tile
            if (valid) {
                const i64 rank = running + woff + __popc(bal & lt_mask);
                bool keep = ok && (key > thr || (tie && rank < k));
                if (or_with != nullptr) keep = keep || (or_with[i] != 0);
                out[i] = keep ? 1 : 0;
            }
            running += tile;
        }
    }
}

extern "C" __global__ void topk_select_f32(
    const float* scores, const u8* cand, int invert, const u8* or_with, const int* chunk_seg,
    const i64* chunk_start, const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem,
    const i64* chunk_tie_base, u8* out)
{
    select_impl<float>(scores, cand, invert, or_with, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem,
                       chunk_tie_base, out);
}

extern "C" __global__ void topk_select_f64(
    const double* scores, const u8* cand, int invert, const u8* or_with, const int* chunk_seg,
    const i64* chunk_start, const i64* chunk_end, i64 n_chunks, const u64* prefix, const i64* krem,
    const i64* chunk_tie_base, u8* out)
{
    select_impl<double>(scores, cand, invert, or_with, chunk_seg, chunk_start, chunk_end, n_chunks, prefix, krem,
                        chunk_tie_base, out);
}

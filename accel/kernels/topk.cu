// topk.cu -- exact segmented top-k with the project's tie rule: one radix histogram over the most
// significant digit, then work on the threshold bucket only.
// Twin: reference/topk.py topk_within (per segment); used for per-layer top-k (one segment per
// layer), global top-k (one segment over the concatenation), and the drop / grow selections of
// dynamic sparse training (candidates = active weights, or the inactive ones after the drop).
//
// Problem. A flat buffer of scores is cut into consecutive segments (layers). Segment s keeps
// exactly k_s of its candidate positions: larger score first, equal scores -> smaller flat index
// first (the tie rule, docs/methods.md §1.2). Candidates are given by a uint8 array (cand != 0, or == 0 when
// `invert`), or are all positions when the array pointer is null. Scores are finite (the host
// checks; a NaN is an error, never ranked) and 0 <= k_s <= #candidates of s (host-validated).
// The output byte of every position is keep, or keep | or_with[i] when or_with is given (the grow
// step writes old-kept | grown directly).
//
// Keys. Each float is mapped to an unsigned integer of the same width whose unsigned order is the
// float order: positive -> bits | signbit, negative -> ~bits; -0.0 is first folded onto +0.0 so
// that scores equal as floats have equal keys (as NumPy/torch comparisons treat them).
//
// Digits. The key is cut into digits of at most RADIX_BITS = 11 bits, most significant first
// (float32: bits 31..21, 20..10, 9..0; float64: five of 11 bits and one of 9). Per segment and
// level p the device holds prefix_p (the key bits of digits < p of the k_s-th largest candidate
// key T) and krem_p (how many candidates whose key starts with prefix_p still belong to the top
// k_s). Level 0: prefix 0, krem k_s. A scan of the level-p histogram of digit p finds the digit d
// with  above(d) < krem_p <= above(d) + hist[d],  above(d) = sum_{d' > d} hist[d'],  and sets
// prefix_{p+1} = prefix_p | d << shift_p, krem_{p+1} = krem_p - above(d). Invariant: exactly
// k_s - krem_p candidates have a key above every key that starts with prefix_p, and T starts with
// prefix_p. After the last digit prefix = T, and 1 <= krem <= #(key == T). k_s = 0 keeps krem 0
// at every level (no scan writes it), which keeps nothing.
//
// The launch chain (float32: 5 kernels; float64: 8), the same for any number of segments:
//   topk_hist_*    read every score once: shared-memory histogram of digit 0 of the candidates
//                  (warp-aggregated shared atomics: __match_any_sync gives one atomic per distinct
//                  digit per warp, so heavy ties do not serialize), added into hist[s].
//   topk_filter_*  read every score again, and with level 1 known (d0 = the threshold bucket):
//                  writes the output byte of every position (keep = key's digit 0 > d0; bucket
//                  positions provisionally keep = 0), copies the keys of the bucket candidates
//                  (digit 0 == d0; usually a few percent) in index order into a compacted list
//                  (the slice of the chunk's own range in ckeys, their offsets within the chunk
//                  in coff, their number in cnt[chunk]), and histograms their digit 1.
//   topk_refine_*  digits 2.. on the compacted keys only (float32: once; float64: 4 times).
//   topk_ties_*    per chunk, the number of compacted keys equal to T.
//   topk_resolve_* per compacted key: keep = key > T || (key == T && tie_rank < krem), where the
//                  tie rank counts the ties of the segment at smaller indices (the ties of earlier
//                  chunks plus a block-wide scan of warp ballots within the chunk: entries are in
//                  index order); writes 1 for the kept ones. So the kept set is exactly the first
//                  k_s entries of a stable sort by (-score, index) -- the reference's keep set.
// Each histogram kernel ends its segment itself: a block that has flushed its share of segment s
// counts its chunks into done[s] (after a __threadfence, so its bins are visible first); the block
// that completes the count is the last contributor, and it scans hist[s] (reading and clearing
// each bin with atomicExch, after a second fence) and writes level p+1 of s. No scan launches.
//
// Work split. A persistent grid (a few blocks per multiprocessor, sized by the host); block b
// takes the contiguous chunk range [b*C/G, (b+1)*C/G) of the C chunks (a chunk lies in one
// segment), keeps its shared histogram across consecutive chunks of one segment and flushes it
// (one global atomic per non-empty bin) only when the segment changes or its range ends. The full
// passes read 16-byte vectors (4 float32 / 2 float64 scores, and the matching 4 / 2 candidate
// bytes) whenever the host found every pointer aligned (`vec`), scalars at chunk edges otherwise.
// Races: between blocks only atomics (hist, done) and the last-block scan, which runs after every
// other contributor of s has counted itself; level p+1 is a different array from level p, so a
// block reading level p never sees it change; compacted keys, cnt and ties of a chunk are written
// by the one block that owns the chunk and read only by later launches (one stream). Indices are
// 64-bit throughout (segments and buffers beyond 2^31 elements); chunks are at most 65536 long
// (offsets within a chunk are 16-bit).
// Cost: two reads of the scores (+ candidates), one write of the mask, plus about 6 bytes written
// and (passes - 1) * 4 bytes read per bucket element; see NOTES.md for the byte counts.

#include "common.cuh"

#define RADIX_BITS 11
#define RADIX (1 << RADIX_BITS)
#define TOPK_THREADS 256                    // every topk kernel runs with blockDim.x == 256
#define BINS_PER_THREAD (RADIX / TOPK_THREADS)
#define TOPK_MIN_BLOCKS 4                   // resident blocks per multiprocessor the host's grid assumes
#define TOPK_FILTER_MIN_BLOCKS 3            // ... for topk_filter_* (more registers: 85 at most)
#define TOPK_UNROLL 2                       // 16-byte groups per thread in flight in the full passes

// the key of a float given by its bits
__device__ __forceinline__ u32 key_of_bits(u32 u)
{
    if (u == 0x80000000u) u = 0u;                               // -0.0 -> +0.0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ u64 key_of_bits(u64 u)
{
    if (u == 0x8000000000000000ull) u = 0ull;                   // -0.0 -> +0.0
    return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

__device__ __forceinline__ u32 order_key(float x) { return key_of_bits(__float_as_uint(x)); }
__device__ __forceinline__ u64 order_key(double x) { return key_of_bits((u64)__double_as_longlong(x)); }

// per dtype: the key type, the elements of one 16-byte vector, the vector type of their bits and
// the integer type that holds their VEC candidate / output bytes
template <typename T> struct Tr;
template <> struct Tr<float> {
    typedef u32 K; typedef uint4 V; typedef u32 B;
    enum { BITS = 32, VEC = 4 };
    static __device__ __forceinline__ K part(const V& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }
};
template <> struct Tr<double> {
    typedef u64 K; typedef ulonglong2 V; typedef unsigned short B;
    enum { BITS = 64, VEC = 2 };
    static __device__ __forceinline__ K part(const V& v, int j) { return j == 0 ? v.x : v.y; }
};

// mask of the key bits above a digit that ends below bit hb (bits [hb, bits)); 0 when hb == bits
template <typename K>
__device__ __forceinline__ K high_mask(int hb)
{
    return hb >= (int)(8 * sizeof(K)) ? K(0) : ~((K(1) << hb) - K(1));
}

__device__ __forceinline__ bool is_cand(u32 byte, int invert) { return (byte != 0u) != (invert != 0); }

// whether group g lies wholly inside [lo, hi) and is read / written as one vector
template <typename T>
__device__ __forceinline__ bool whole_group(int vec, i64 lo, i64 hi, i64 g)
{
    const i64 i0 = g * Tr<T>::VEC;
    return vec && i0 >= lo && i0 + Tr<T>::VEC <= hi;
}

// The VEC positions of group g (elements g*VEC .. g*VEC+VEC-1) that lie in [lo, hi): their keys and
// whether each is a candidate inside the chunk. One 16-byte load when the group is whole and `vec`.
template <typename T>
__device__ __forceinline__ void load_group(const T* __restrict__ scores, const u8* __restrict__ cand, int invert,
                                           int vec, i64 lo, i64 hi, i64 g, typename Tr<T>::K* key, bool* ok)
{
    typedef Tr<T> X;
    const i64 i0 = g * X::VEC;
    if (whole_group<T>(vec, lo, hi, g)) {
        const typename X::V v = __ldg(reinterpret_cast<const typename X::V*>(scores) + g);
        u32 cb = 0xffffffffu;
        if (cand != nullptr) cb = (u32)__ldg(reinterpret_cast<const typename X::B*>(cand) + g);
#pragma unroll
        for (int j = 0; j < X::VEC; ++j) {
            key[j] = key_of_bits(X::part(v, j));
            ok[j] = cand == nullptr || is_cand((cb >> (8 * j)) & 0xffu, invert);
        }
    } else {
#pragma unroll
        for (int j = 0; j < X::VEC; ++j) {
            const i64 i = i0 + j;
            ok[j] = i >= lo && i < hi && (cand == nullptr || is_cand(cand[i], invert));
            key[j] = ok[j] ? order_key(scores[i]) : typename X::K(0);
        }
    }
}

// Block-wide exclusive prefix sum of one value per thread; `total` gets the block's sum. Contains
// barriers: every thread of the block must call it (warp_tot: 32 shared slots).
template <typename I>
__device__ __forceinline__ I block_exclusive_scan(I v, I* warp_tot, I* total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    I x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const I y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) warp_tot[warp] = x;
    __syncthreads();
    I before = 0, all = 0;
    for (int w = 0; w < nwarps; ++w) {
        const I t = warp_tot[w];
        if (w < warp) before += t;
        all += t;
    }
    __syncthreads();                                // warp_tot is rewritten by the next call
    *total = all;
    return before + x - v;
}

// The rank of a flagged thread among the flagged threads of the block (thread order), and the
// block's count in `total`. Contains barriers: every thread of the block must call it.
__device__ __forceinline__ int block_rank(bool flag, int* warp_cnt, int* total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    const u32 bal = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_cnt[warp] = __popc(bal);
    __syncthreads();
    int off = 0, all = 0;
    for (int w = 0; w < nwarps; ++w) {
        const int x = warp_cnt[w];
        if (w < warp) off += x;
        all += x;
    }
    __syncthreads();                                // warp_cnt is rewritten by the next call
    *total = all;
    return off + __popc(bal & ((1u << lane) - 1u));
}

// warp-aggregated shared histogram update: bin < 0 adds nothing (every lane of the warp must call)
__device__ __forceinline__ void hist_add(u32* sh, int bin)
{
    const u32 peers = __match_any_sync(0xffffffffu, bin);
    if (bin >= 0 && (int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&sh[bin], (u32)__popc(peers));
}

// The scan of segment s at level p (block-wide; thread j owns the bins of rank j*8 .. j*8+7 in
// descending digit order). Reads and clears hist[s] with atomicExch (the bins were added by other
// blocks with device atomics), and writes level p+1 of s when krem_p > 0.
__device__ __forceinline__ void scan_segment(int s, u64* __restrict__ hist, const u64* __restrict__ prefix_in,
                                             const i64* __restrict__ krem_in, u64* __restrict__ prefix_out,
                                             i64* __restrict__ krem_out, int shift, u64* warp_tot)
{
    const i64 k = krem_in[s];
    u64* h = hist + (i64)s * RADIX;
    u64 v[BINS_PER_THREAD];
    u64 tot = 0;
#pragma unroll
    for (int q = 0; q < BINS_PER_THREAD; ++q) {
        v[q] = atomicExch(&h[RADIX - 1 - (threadIdx.x * BINS_PER_THREAD + q)], 0ull);
        tot += v[q];
    }
    u64 all;
    u64 run = block_exclusive_scan<u64>(tot, warp_tot, &all);
    if (k <= 0) return;                             // block-uniform
    const u64 need = (u64)k;
    const u64 pre = prefix_in == nullptr ? 0ull : prefix_in[s];
#pragma unroll
    for (int q = 0; q < BINS_PER_THREAD; ++q) {
        // the intervals (run, run + v[q]] are disjoint over all bins: at most one thread matches
        if (run < need && need <= run + v[q]) {
            const u64 digit = (u64)(RADIX - 1 - (threadIdx.x * BINS_PER_THREAD + q));
            prefix_out[s] = pre | (digit << shift);
            krem_out[s] = (i64)(need - run);
        }
        run += v[q];
    }
}

// The end of a block's share of segment s in a histogram launch: add the shared bins into hist[s]
// (clearing them), count the `chunks` this block did into done[s]; the block that completes
// seg_nch[s] scans s. Every thread of the block must call it.
__device__ __forceinline__ void flush_segment(int s, i64 chunks, u32* sh, u64* __restrict__ hist,
                                              u64* __restrict__ done, const i64* __restrict__ seg_nch,
                                              const u64* __restrict__ prefix_in, const i64* __restrict__ krem_in,
                                              u64* __restrict__ prefix_out, i64* __restrict__ krem_out, int shift,
                                              u64* warp_tot, int* last)
{
    __syncthreads();                                // every shared atomic of this segment is done
    u64* h = hist + (i64)s * RADIX;
    for (int b = threadIdx.x; b < RADIX; b += blockDim.x) {
        const u32 v = sh[b];
        if (v) {
            atomicAdd(&h[b], (u64)v);
            sh[b] = 0u;
        }
    }
    __threadfence();                                // these bins are visible device-wide before the count
    __syncthreads();
    if (threadIdx.x == 0) {
        const u64 before = atomicAdd(&done[s], (u64)chunks);
        *last = before + (u64)chunks == (u64)seg_nch[s];
    }
    __syncthreads();
    if (*last) {                                    // block-uniform: every other contributor has counted
        __threadfence();
        scan_segment(s, hist, prefix_in, krem_in, prefix_out, krem_out, shift, warp_tot);
    }
    __syncthreads();                                // *last is rewritten by the next flush
}

// this block's contiguous share [*c0, *c1) of n_chunks chunks
__device__ __forceinline__ void block_range(i64 n_chunks, i64* c0, i64* c1)
{
    *c0 = (i64)blockIdx.x * n_chunks / gridDim.x;
    *c1 = (i64)(blockIdx.x + 1) * n_chunks / gridDim.x;
}

// ------------------------------------------------------------------------------------- pass 1
template <typename T>
__device__ __forceinline__ void hist_impl(
    const T* __restrict__ scores, const u8* __restrict__ cand, int invert, int vec,
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
    i64 n_chunks, const i64* __restrict__ seg_nch, const i64* __restrict__ ks, u64* __restrict__ hist,
    u64* __restrict__ done, u64* __restrict__ prefix_out, i64* __restrict__ krem_out, int shift, int width)
{
    typedef Tr<T> X;
    typedef typename X::K K;
    __shared__ u32 sh[RADIX];
    __shared__ u64 warp_tot[32];
    __shared__ int last;
    const u32 dmask = (1u << width) - 1u;
    for (int b = threadIdx.x; b < RADIX; b += blockDim.x) sh[b] = 0u;
    __syncthreads();                                // cleared before any thread adds to it
    i64 c0, c1;
    block_range(n_chunks, &c0, &c1);
    int cur = -1;
    i64 mine = 0;
    for (i64 c = c0; c < c1; ++c) {
        const int s = chunk_seg[c];
        if (s != cur) {                             // block-uniform
            if (cur >= 0)
                flush_segment(cur, mine, sh, hist, done, seg_nch, nullptr, ks, prefix_out, krem_out, shift,
                              warp_tot, &last);
            cur = s;
            mine = 0;
        }
        ++mine;
        if (ks[s] <= 0) continue;                   // block-uniform: nothing to pick in this segment
        const i64 lo = chunk_start[c], hi = chunk_end[c];
        const i64 glo = lo / X::VEC, ghi = (hi + X::VEC - 1) / X::VEC;
        // TOPK_UNROLL groups per thread per step, all loaded before any is used (bytes in flight);
        // the trip count is the same for every thread, so whole warps reach __match_any_sync together
        for (i64 gb = glo; gb < ghi; gb += TOPK_UNROLL * blockDim.x) {
            K key[TOPK_UNROLL][X::VEC];
            bool ok[TOPK_UNROLL][X::VEC];
#pragma unroll
            for (int u = 0; u < TOPK_UNROLL; ++u) {
                const i64 g = gb + u * blockDim.x + threadIdx.x;
                load_group<T>(scores, cand, invert, vec, lo, hi, g < ghi ? g : glo, key[u], ok[u]);
                if (g >= ghi)
                    for (int j = 0; j < X::VEC; ++j) ok[u][j] = false;
            }
#pragma unroll
            for (int u = 0; u < TOPK_UNROLL; ++u)
#pragma unroll
                for (int j = 0; j < X::VEC; ++j)
                    hist_add(sh, ok[u][j] ? (int)((key[u][j] >> shift) & (K)dmask) : -1);
        }
    }
    if (cur >= 0)
        flush_segment(cur, mine, sh, hist, done, seg_nch, nullptr, ks, prefix_out, krem_out, shift, warp_tot, &last);
}

// ------------------------------------------------------------------------------------- pass 2
template <typename T>
__device__ __forceinline__ void filter_impl(
    const T* __restrict__ scores, const u8* __restrict__ cand, int invert, const u8* __restrict__ or_with, int vec,
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
    i64 n_chunks, const i64* __restrict__ seg_nch, u64* __restrict__ hist, u64* __restrict__ done,
    const u64* __restrict__ prefix_in, const i64* __restrict__ krem_in, u64* __restrict__ prefix_out,
    i64* __restrict__ krem_out, int shift, int width, typename Tr<T>::K* __restrict__ ckeys,
    unsigned short* __restrict__ coff, int* __restrict__ cnt, typename Tr<T>::K* __restrict__ cmin,
    typename Tr<T>::K* __restrict__ cmax, u8* __restrict__ out)
{
    typedef Tr<T> X;
    typedef typename X::K K;
    __shared__ u32 sh[RADIX];
    __shared__ u64 warp_tot[32];
    __shared__ int warp_cnt[32];
    __shared__ K wmin[32], wmax[32];
    __shared__ int last;
    const u32 dmask = (1u << width) - 1u;
    const K hm = high_mask<K>(shift + width);       // the bits of digit 0
    for (int b = threadIdx.x; b < RADIX; b += blockDim.x) sh[b] = 0u;
    __syncthreads();                                // cleared before any thread adds to it
    i64 c0, c1;
    block_range(n_chunks, &c0, &c1);
    int cur = -1;
    i64 mine = 0;
    for (i64 c = c0; c < c1; ++c) {
        const int s = chunk_seg[c];
        if (s != cur) {
            if (cur >= 0)
                flush_segment(cur, mine, sh, hist, done, seg_nch, prefix_in, krem_in, prefix_out, krem_out, shift,
                              warp_tot, &last);
            cur = s;
            mine = 0;
        }
        ++mine;
        const bool live = krem_in[s] > 0;           // block-uniform; false: k_s = 0, keep nothing
        const K pre = (K)prefix_in[s];
        const i64 lo = chunk_start[c], hi = chunk_end[c];
        const i64 glo = lo / X::VEC, ghi = (hi + X::VEC - 1) / X::VEC;
        int running = 0;                            // bucket entries of this chunk so far (block-uniform)
        K kmin = ~K(0), kmax = K(0);                // this thread's smallest / largest bucket key
        for (i64 gb = glo; gb < ghi; gb += TOPK_UNROLL * blockDim.x) {
            K key[TOPK_UNROLL][X::VEC];
            bool ok[TOPK_UNROLL][X::VEC];
            u32 orb[TOPK_UNROLL];
#pragma unroll
            for (int u = 0; u < TOPK_UNROLL; ++u) {
                const i64 g = gb + u * blockDim.x + threadIdx.x;
                load_group<T>(scores, cand, invert, vec, lo, hi, g < ghi ? g : glo, key[u], ok[u]);
                orb[u] = 0u;
                if (or_with != nullptr && whole_group<T>(vec, lo, hi, g) && g < ghi)
                    orb[u] = (u32)__ldg(reinterpret_cast<const typename X::B*>(or_with) + g);
            }
            // bucket counts of this thread's groups, packed (group u in bits 16u..): one scan for all
            int packed = 0;
            u32 keepb[TOPK_UNROLL];
#pragma unroll
            for (int u = 0; u < TOPK_UNROLL; ++u) {
                const i64 g = gb + u * blockDim.x + threadIdx.x;
                keepb[u] = 0u;
#pragma unroll
                for (int j = 0; j < X::VEC; ++j) {
                    const bool cj = g < ghi && live && ok[u][j];
                    const K top = key[u][j] & hm;
                    keepb[u] |= (cj && top > pre ? 1u : 0u) << (8 * j);
                    const bool buck = cj && top == pre;
                    packed += buck ? 1 << (16 * u) : 0;
                    hist_add(sh, buck ? (int)((key[u][j] >> shift) & (K)dmask) : -1);
                }
            }
            int tile;
            const int excl = block_exclusive_scan<int>(packed, warp_cnt, &tile);
            int before_part = 0;                    // entries of earlier groups-of-u of this step
#pragma unroll
            for (int u = 0; u < TOPK_UNROLL; ++u) {
                const i64 g = gb + u * blockDim.x + threadIdx.x;
                const i64 i0 = g * X::VEC;
                if (g < ghi) {
                    if (whole_group<T>(vec, lo, hi, g)) {
                        __stwb(reinterpret_cast<typename X::B*>(out) + g, (typename X::B)(keepb[u] | orb[u]));
                    } else {
#pragma unroll
                        for (int j = 0; j < X::VEC; ++j) {
                            const i64 i = i0 + j;
                            if (i >= lo && i < hi) {
                                u8 o = (u8)((keepb[u] >> (8 * j)) & 1u);
                                if (or_with != nullptr) o |= or_with[i] != 0 ? 1 : 0;
                                out[i] = o;
                            }
                        }
                    }
                }
                int pos = running + before_part + ((excl >> (16 * u)) & 0xffff);
#pragma unroll
                for (int j = 0; j < X::VEC; ++j) {
                    if (g < ghi && live && ok[u][j] && (key[u][j] & hm) == pre) {   // a bucket entry, in index order
                        ckeys[lo + pos] = key[u][j];
                        coff[lo + pos] = (unsigned short)(i0 + j - lo);
                        ++pos;
                        kmin = key[u][j] < kmin ? key[u][j] : kmin;
                        kmax = key[u][j] > kmax ? key[u][j] : kmax;
                    }
                }
                before_part += (tile >> (16 * u)) & 0xffff;
            }
            running += before_part;
        }
        // the chunk's key range: later passes settle a chunk whose entries share their upper bits
        // (all equal keys: the ties of pruned zeros) or lie wholly above / below T without reading them
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const K a = __shfl_down_sync(0xffffffffu, kmin, o), b = __shfl_down_sync(0xffffffffu, kmax, o);
            kmin = a < kmin ? a : kmin;
            kmax = b > kmax ? b : kmax;
        }
        if ((threadIdx.x & 31) == 0) {
            wmin[threadIdx.x >> 5] = kmin;
            wmax[threadIdx.x >> 5] = kmax;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            K a = ~K(0), b = K(0);
            for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
                a = wmin[w] < a ? wmin[w] : a;
                b = wmax[w] > b ? wmax[w] : b;
            }
            cnt[c] = running;
            cmin[c] = a;
            cmax[c] = b;
        }
        __syncthreads();                            // wmin / wmax are rewritten by the next chunk
    }
    if (cur >= 0)
        flush_segment(cur, mine, sh, hist, done, seg_nch, prefix_in, krem_in, prefix_out, krem_out, shift, warp_tot,
                      &last);
}

// ------------------------------------------------------------------------------------- digits 2..
template <typename K>
__device__ __forceinline__ void refine_impl(
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, i64 n_chunks,
    const i64* __restrict__ seg_nch, u64* __restrict__ hist, u64* __restrict__ done,
    const u64* __restrict__ prefix_in, const i64* __restrict__ krem_in, u64* __restrict__ prefix_out,
    i64* __restrict__ krem_out, int shift, int width, const K* __restrict__ ckeys, const int* __restrict__ cnt,
    const K* __restrict__ cmin, const K* __restrict__ cmax)
{
    __shared__ u32 sh[RADIX];
    __shared__ u64 warp_tot[32];
    __shared__ int last;
    const u32 dmask = (1u << width) - 1u;
    const K hm = high_mask<K>(shift + width);
    for (int b = threadIdx.x; b < RADIX; b += blockDim.x) sh[b] = 0u;
    __syncthreads();                                // cleared before any thread adds to it
    i64 c0, c1;
    block_range(n_chunks, &c0, &c1);
    int cur = -1;
    i64 mine = 0;
    for (i64 c = c0; c < c1; ++c) {
        const int s = chunk_seg[c];
        if (s != cur) {
            if (cur >= 0)
                flush_segment(cur, mine, sh, hist, done, seg_nch, prefix_in, krem_in, prefix_out, krem_out, shift,
                              warp_tot, &last);
            cur = s;
            mine = 0;
        }
        ++mine;
        const int ne = cnt[c];
        if (krem_in[s] <= 0 || ne == 0) continue;   // block-uniform
        const K pre = (K)prefix_in[s];
        const K lo_k = cmin[c], hi_k = cmax[c];
        if ((hi_k & hm) < pre || (lo_k & hm) > pre) continue;   // no entry of this chunk has the prefix
        if ((lo_k >> shift) == (hi_k >> shift)) {   // every entry has the prefix and the same digit
            if (threadIdx.x == 0) atomicAdd(&sh[(int)((lo_k >> shift) & (K)dmask)], (u32)ne);
            continue;
        }
        const K* ck = ckeys + chunk_start[c];
        for (int eb = 0; eb < ne; eb += blockDim.x) {
            const int e = eb + threadIdx.x;
            int bin = -1;
            if (e < ne) {
                const K key = ck[e];
                if ((key & hm) == pre) bin = (int)((key >> shift) & (K)dmask);
            }
            hist_add(sh, bin);
        }
    }
    if (cur >= 0)
        flush_segment(cur, mine, sh, hist, done, seg_nch, prefix_in, krem_in, prefix_out, krem_out, shift, warp_tot,
                      &last);
}

// ------------------------------------------------------------------------------------- ties
template <typename K>
__device__ __forceinline__ void ties_impl(
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, i64 n_chunks,
    const u64* __restrict__ prefix, const i64* __restrict__ krem, const K* __restrict__ ckeys,
    const int* __restrict__ cnt, const K* __restrict__ cmin, const K* __restrict__ cmax, int* __restrict__ ties)
{
    __shared__ int warp_cnt[32];
    i64 c0, c1;
    block_range(n_chunks, &c0, &c1);
    for (i64 c = c0; c < c1; ++c) {
        const int s = chunk_seg[c];
        const int ne = cnt[c];
        const K thr = (K)prefix[s];
        const K lo_k = cmin[c], hi_k = cmax[c];
        if (krem[s] <= 0 || ne == 0 || thr < lo_k || thr > hi_k) {     // block-uniform: no tie here
            if (threadIdx.x == 0) ties[c] = 0;
            continue;
        }
        if (lo_k == hi_k) {                         // every entry equals T
            if (threadIdx.x == 0) ties[c] = ne;
            continue;
        }
        int mine = 0;
        const K* ck = ckeys + chunk_start[c];
        for (int e = threadIdx.x; e < ne; e += blockDim.x) mine += ck[e] == thr ? 1 : 0;
        int tot;
        block_exclusive_scan<int>(mine, warp_cnt, &tot);
        if (threadIdx.x == 0) ties[c] = tot;
    }
}

// ------------------------------------------------------------------------------------- resolve
template <typename K>
__device__ __forceinline__ void resolve_impl(
    const int* __restrict__ chunk_seg, const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_first,
    i64 n_chunks, const u64* __restrict__ prefix, const i64* __restrict__ krem, const K* __restrict__ ckeys,
    const unsigned short* __restrict__ coff, const int* __restrict__ cnt, const K* __restrict__ cmin,
    const K* __restrict__ cmax, const int* __restrict__ ties, u8* __restrict__ out)
{
    __shared__ int warp_cnt[32];
    __shared__ i64 warp_sum[32];
    i64 c0, c1;
    block_range(n_chunks, &c0, &c1);
    if (c0 >= c1) return;                           // block-uniform: an empty share
    // ties of the same segment in chunks before this block's first chunk
    i64 before = 0;
    for (i64 c = chunk_first[c0] + threadIdx.x; c < c0; c += blockDim.x) before += ties[c];
    i64 base;
    block_exclusive_scan<i64>(before, warp_sum, &base);
    for (i64 c = c0; c < c1; ++c) {
        if (c > c0 && chunk_first[c] == c) base = 0;   // a new segment starts here
        const int s = chunk_seg[c];
        const i64 k = krem[s];
        if (k <= 0) continue;                       // block-uniform (such a segment has no entries)
        const K thr = (K)prefix[s];
        const i64 lo = chunk_start[c];
        const int ne = cnt[c];
        const K lo_k = cmin[c], hi_k = cmax[c];
        if (ne == 0 || hi_k < thr) continue;        // block-uniform: nothing kept, no tie
        if (lo_k > thr || lo_k == hi_k) {           // all kept (no tie), or all tied at T (kept in index order)
            const i64 take = lo_k > thr ? ne : (k - base < 0 ? 0 : (k - base < ne ? k - base : ne));
            for (int e = threadIdx.x; e < take; e += blockDim.x) out[lo + coff[lo + e]] = 1;
            if (lo_k == hi_k && lo_k == thr) base += ne;
            continue;
        }
        for (int eb = 0; eb < ne; eb += blockDim.x) {
            const int e = eb + threadIdx.x;
            K key = K(0);
            if (e < ne) key = ckeys[lo + e];
            const bool tie = e < ne && key == thr;
            int tile;
            const i64 rank = base + block_rank(tie, warp_cnt, &tile);   // ties of the segment before e
            if (e < ne && (key > thr || (tie && rank < k))) out[lo + coff[lo + e]] = 1;
            base += tile;
        }
    }
}

// ------------------------------------------------------------------------------------- entry points
#define TOPK_KERNEL extern "C" __global__ void __launch_bounds__(TOPK_THREADS, TOPK_MIN_BLOCKS)
#define TOPK_FILTER_KERNEL extern "C" __global__ void __launch_bounds__(TOPK_THREADS, TOPK_FILTER_MIN_BLOCKS)

TOPK_KERNEL topk_hist_f32(const float* scores, const u8* cand, int invert, int vec, const int* chunk_seg,
                          const i64* chunk_start, const i64* chunk_end, i64 n_chunks, const i64* seg_nch, const i64* ks,
                          u64* hist, u64* done, u64* prefix_out, i64* krem_out, int shift, int width)
{
    hist_impl<float>(scores, cand, invert, vec, chunk_seg, chunk_start, chunk_end, n_chunks, seg_nch, ks, hist, done,
                     prefix_out, krem_out, shift, width);
}

TOPK_KERNEL topk_hist_f64(const double* scores, const u8* cand, int invert, int vec, const int* chunk_seg,
                          const i64* chunk_start, const i64* chunk_end, i64 n_chunks, const i64* seg_nch, const i64* ks,
                          u64* hist, u64* done, u64* prefix_out, i64* krem_out, int shift, int width)
{
    hist_impl<double>(scores, cand, invert, vec, chunk_seg, chunk_start, chunk_end, n_chunks, seg_nch, ks, hist, done,
                      prefix_out, krem_out, shift, width);
}

TOPK_FILTER_KERNEL topk_filter_f32(const float* scores, const u8* cand, int invert, const u8* or_with, int vec,
                            const int* chunk_seg, const i64* chunk_start, const i64* chunk_end, i64 n_chunks,
                            const i64* seg_nch, u64* hist, u64* done, const u64* prefix_in, const i64* krem_in,
                            u64* prefix_out, i64* krem_out, int shift, int width, u32* ckeys, unsigned short* coff,
                            int* cnt, u32* cmin, u32* cmax, u8* out)
{
    filter_impl<float>(scores, cand, invert, or_with, vec, chunk_seg, chunk_start, chunk_end, n_chunks, seg_nch, hist,
                       done, prefix_in, krem_in, prefix_out, krem_out, shift, width, ckeys, coff, cnt, cmin, cmax, out);
}

TOPK_FILTER_KERNEL topk_filter_f64(const double* scores, const u8* cand, int invert, const u8* or_with, int vec,
                            const int* chunk_seg, const i64* chunk_start, const i64* chunk_end, i64 n_chunks,
                            const i64* seg_nch, u64* hist, u64* done, const u64* prefix_in, const i64* krem_in,
                            u64* prefix_out, i64* krem_out, int shift, int width, u64* ckeys, unsigned short* coff,
                            int* cnt, u64* cmin, u64* cmax, u8* out)
{
    filter_impl<double>(scores, cand, invert, or_with, vec, chunk_seg, chunk_start, chunk_end, n_chunks, seg_nch,
                        hist, done, prefix_in, krem_in, prefix_out, krem_out, shift, width, ckeys, coff, cnt, cmin, cmax, out);
}

TOPK_KERNEL topk_refine_f32(const int* chunk_seg, const i64* chunk_start, i64 n_chunks, const i64* seg_nch, u64* hist,
                            u64* done, const u64* prefix_in, const i64* krem_in, u64* prefix_out, i64* krem_out,
                            int shift, int width, const u32* ckeys, const int* cnt, const u32* cmin,
                            const u32* cmax)
{
    refine_impl<u32>(chunk_seg, chunk_start, n_chunks, seg_nch, hist, done, prefix_in, krem_in, prefix_out, krem_out,
                     shift, width, ckeys, cnt, cmin, cmax);
}

TOPK_KERNEL topk_refine_f64(const int* chunk_seg, const i64* chunk_start, i64 n_chunks, const i64* seg_nch, u64* hist,
                            u64* done, const u64* prefix_in, const i64* krem_in, u64* prefix_out, i64* krem_out,
                            int shift, int width, const u64* ckeys, const int* cnt, const u64* cmin,
                            const u64* cmax)
{
    refine_impl<u64>(chunk_seg, chunk_start, n_chunks, seg_nch, hist, done, prefix_in, krem_in, prefix_out, krem_out,
                     shift, width, ckeys, cnt, cmin, cmax);
}

TOPK_KERNEL topk_ties_f32(const int* chunk_seg, const i64* chunk_start, i64 n_chunks, const u64* prefix,
                          const i64* krem, const u32* ckeys, const int* cnt, const u32* cmin, const u32* cmax,
                          int* ties)
{
    ties_impl<u32>(chunk_seg, chunk_start, n_chunks, prefix, krem, ckeys, cnt, cmin, cmax, ties);
}

TOPK_KERNEL topk_ties_f64(const int* chunk_seg, const i64* chunk_start, i64 n_chunks, const u64* prefix,
                          const i64* krem, const u64* ckeys, const int* cnt, const u64* cmin, const u64* cmax,
                          int* ties)
{
    ties_impl<u64>(chunk_seg, chunk_start, n_chunks, prefix, krem, ckeys, cnt, cmin, cmax, ties);
}

TOPK_KERNEL topk_resolve_f32(const int* chunk_seg, const i64* chunk_start, const i64* chunk_first, i64 n_chunks,
                             const u64* prefix, const i64* krem, const u32* ckeys, const unsigned short* coff,
                             const int* cnt, const u32* cmin, const u32* cmax, const int* ties, u8* out)
{
    resolve_impl<u32>(chunk_seg, chunk_start, chunk_first, n_chunks, prefix, krem, ckeys, coff, cnt, cmin, cmax,
                      ties, out);
}

TOPK_KERNEL topk_resolve_f64(const int* chunk_seg, const i64* chunk_start, const i64* chunk_first, i64 n_chunks,
                             const u64* prefix, const i64* krem, const u64* ckeys, const unsigned short* coff,
                             const int* cnt, const u64* cmin, const u64* cmax, const int* ties, u8* out)
{
    resolve_impl<u64>(chunk_seg, chunk_start, chunk_first, n_chunks, prefix, krem, ckeys, coff, cnt, cmin, cmax,
                      ties, out);
}

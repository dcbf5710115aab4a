// probes.cu -- small kernels that test the SIMT emulator itself (tests/test_kernels_simt.py):
// its intrinsics against their CUDA definitions, and that it reports what a GPU would hang on or
// leave undefined. Not part of the library.
typedef unsigned int u32;
typedef unsigned long long u64;

// every thread writes its coordinates: out[4 * gid + {0,1,2,3}] = threadIdx, blockIdx, blockDim, gridDim
extern "C" __global__ void probe_indices(int* out, int n)
{
    for (int b = blockIdx.x; b < n; b += gridDim.x) {
        const int gid = b * blockDim.x + threadIdx.x;
        out[4 * gid] = threadIdx.x;
        out[4 * gid + 1] = b;
        out[4 * gid + 2] = blockDim.x;
        out[4 * gid + 3] = gridDim.x;
    }
}

// warp collectives on x[gid]: up/down shuffles by `delta`, ballot of (x > 0), match_any of x
extern "C" __global__ void probe_collectives(const long long* x, long long* up, long long* down, u32* ballot,
                                             u32* match, int delta)
{
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    const long long v = x[gid];
    up[gid] = __shfl_up_sync(0xffffffffu, v, delta);
    down[gid] = __shfl_down_sync(0xffffffffu, v, delta);
    ballot[gid] = __ballot_sync(0xffffffffu, v > 0);
    match[gid] = __match_any_sync(0xffffffffu, v);
}

// reads shared memory nobody wrote (a plain and a template-function static): the poison shows
template <typename T>
__device__ __forceinline__ T read_uninit_t()
{
    __shared__ T buf[64];
    return buf[threadIdx.x % 64];
}

extern "C" __global__ void probe_uninit_shared(u32* out, u64* out_t)
{
    __shared__ u32 buf[64];
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    out[gid] = buf[threadIdx.x % 64];
    out_t[gid] = read_uninit_t<u64>();
}

// thread 0 writes a shared flag and every thread reads it, with or without a barrier between
extern "C" __global__ void probe_flag(int* out, int with_barrier)
{
    __shared__ int flag;
    if (threadIdx.x == 0) flag = 7;
    if (with_barrier) __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = flag;
    __syncthreads();
}

// defects a GPU hangs on or leaves undefined
extern "C" __global__ void probe_divergent_barrier(int* out)
{
    if (threadIdx.x < 64) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

extern "C" __global__ void probe_early_exit(int* out)
{
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" __global__ void probe_partial_mask(int* out)
{
    out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, (int)threadIdx.x, 1);
}

// reads one element past the end of x (AddressSanitizer builds of the emulator report it)
extern "C" __global__ void probe_out_of_bounds(const float* x, float* out, int n)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = x[i + 1];
}

// memory_probes.cu -- kernels that test the SIMT emulator's vector types, cache-hinted loads and
// stores and atomicExch against their CUDA definitions (tests/test_kernels_simt.py). Not part of
// the library.
typedef unsigned int u32;
typedef unsigned long long u64;

// out[4 t .. 4 t + 3] = the uint4 at x + first + 4 t (16-byte loads: x + first must be 16-byte aligned),
// stored back as one uint4 with __stwb, and the 8-byte ulonglong2 halves checked the same way
extern "C" __global__ void probe_vector_copy(const u32* x, u32* out, int first)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(x + first) + t);
    __stwb(reinterpret_cast<uint4*>(out) + t, v);
    const ulonglong2 w = __ldg(reinterpret_cast<const ulonglong2*>(x + first) + t);
    u64* o = reinterpret_cast<u64*>(out + 4 * gridDim.x * blockDim.x);
    __stwb(o + 2 * t, w.x);
    __stwb(o + 2 * t + 1, w.y);
}

// every thread swaps its id into one slot and records the previous occupant
extern "C" __global__ void probe_exchange(u32* slot, u32* seen)
{
    seen[threadIdx.x] = atomicExch(slot, (u32)threadIdx.x + 1u);
}

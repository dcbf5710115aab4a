// runtime.cpp -- the scheduler of the SIMT emulator (see simt.h for the execution model) and its
// C interface, called from Python with ctypes (accel/kernels/simt/__init__.py):
//
//   int simt_launch(name, grid, block, params, seed)  params[i] points at the i-th argument's value,
//                                                     as in cuLaunchKernel; 0 = ok, else an error
//   const char* simt_error()                          the last launch's error message
//   const char* simt_signature(name)                  "p,i4,i8,f4,f8,..." per parameter; NULL if unknown
//   const char* simt_kernel_names()                   comma-separated registered kernels
//
// Kernels register themselves (SIMT_KERNEL in registry.h) from the generated wrapper files, one per
// .cu source, each compiled as its own translation unit.
#include "registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

extern "C" char __start_simt_shared[] __attribute__((weak));
extern "C" void __asan_set_death_callback(void (*)(void)) __attribute__((weak));   // AddressSanitizer builds
extern "C" char __stop_simt_shared[] __attribute__((weak));

namespace simt {
Dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {
struct Kernel { std::string signature; void* fn; Invoker invoke; };
std::map<std::string, Kernel>& kernels() { static std::map<std::string, Kernel> k; return k; }

struct Barrier { int arrived = 0; uint64_t gen = 0; int line = -1; int expected = 0; };

struct Thread {
    ucontext_t ctx;
    bool done = false;
    Barrier* waiting = nullptr;   // the barrier this thread waits at, and its generation then
    uint64_t wait_gen = 0;
    int wait_line = -1;
};

struct Warp { Barrier bar; uint64_t vals[32]; };

const size_t STACK = 256 * 1024;
std::vector<char*> stacks;
std::vector<Thread> threads;
std::vector<Warp> warps;
Barrier block_bar;
ucontext_t scheduler;
Thread* cur = nullptr;
const Kernel* cur_kernel = nullptr;
void** cur_params = nullptr;
const char* cur_name = "";
bool aborted = false;
std::string error;
uint64_t rng_state = 0;

uint64_t next_random()
{
    uint64_t x = rng_state;          // xorshift64*
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void set_error(const char* fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char where[256];
    snprintf(where, sizeof where, "kernel %s, block %u, thread %u: ", cur_name, block_idx.x, thread_idx.x);
    error = std::string(where) + buf;
    aborted = true;
}

// give control back to the scheduler; it resumes this thread when its barrier has opened
void yield_to_scheduler() { swapcontext(&cur->ctx, &scheduler); }

[[noreturn]] void fail_in_thread()
{
    yield_to_scheduler();            // the scheduler sees `aborted` and never resumes this thread
    abort();
}

void arrive(Barrier& b, int line, const char* what)
{
    if (b.arrived == 0) {
        b.line = line;
    } else if (b.line != line) {
        set_error("divergent %s: this thread is at line %d while %d thread(s) wait at line %d",
                  what, line, b.arrived, b.line);
        fail_in_thread();
    }
    const uint64_t gen = b.gen;
    if (++b.arrived == b.expected) {  // the last to arrive opens the barrier
        b.arrived = 0;
        ++b.gen;
        return;
    }
    cur->waiting = &b;
    cur->wait_gen = gen;
    cur->wait_line = line;
    yield_to_scheduler();
}

void thread_main()
{
    cur_kernel->invoke(cur_kernel->fn, cur_params);
    cur->done = true;                // returning switches to uc_link, the scheduler
}

// Byte by byte through a volatile pointer: under AddressSanitizer the section holds the redzones
// between the kernels' globals, which a (intercepted, checked) memset would report.
void poison_shared()
{
    if (__start_simt_shared == nullptr || __stop_simt_shared == nullptr) return;
    volatile char* p = __start_simt_shared;
    for (size_t i = 0, n = (size_t)(__stop_simt_shared - __start_simt_shared); i < n; ++i) p[i] = (char)0xA5;
}

bool run_block()
{
    const unsigned n = block_dim.x;
    poison_shared();
    while (stacks.size() < n) stacks.push_back(static_cast<char*>(malloc(STACK)));
    threads.assign(n, Thread());
    warps.assign(n / 32, Warp());
    for (auto& w : warps) w.bar.expected = 32;
    block_bar = Barrier();
    block_bar.expected = (int)n;
    for (unsigned t = 0; t < n; ++t) {
        Thread& th = threads[t];
        getcontext(&th.ctx);
        th.ctx.uc_stack.ss_sp = stacks[t];
        th.ctx.uc_stack.ss_size = STACK;
        th.ctx.uc_link = &scheduler;
        makecontext(&th.ctx, thread_main, 0);
    }
    // Warp-affine scheduling, like a GPU's warp schedulers: pick a warp, run its threads until
    // none of them can go on (each waits at a block barrier or has exited), pick the next. A warp
    // therefore runs ahead of the others up to the next __syncthreads(), which is what exposes a
    // missing barrier. Seed 0: lowest warp first, lanes in order; otherwise both are random.
    const unsigned n_warps = n / 32;
    std::vector<unsigned> lanes(32), ready;
    for (unsigned l = 0; l < 32; ++l) lanes[l] = l;
    auto runnable = [](const Thread& th) { return !th.done && !(th.waiting && th.waiting->gen == th.wait_gen); };
    unsigned live = n;
    while (live > 0) {
        ready.clear();
        for (unsigned w = 0; w < n_warps; ++w)
            for (unsigned l = 0; l < 32; ++l)
                if (runnable(threads[w * 32 + l])) { ready.push_back(w); break; }
        if (ready.empty()) {         // every live thread waits at a barrier that cannot open
            unsigned first = 0;
            while (threads[first].done) ++first;
            thread_idx = Dim3{first, 0, 0};
            set_error("deadlock: %u live thread(s) wait (thread %u at line %d) while %u thread(s) have exited "
                      "without reaching that barrier or collective", live, first, threads[first].wait_line, n - live);
            return false;
        }
        const unsigned w = rng_state ? ready[next_random() % ready.size()] : ready[0];
        for (bool progressed = true; progressed;) {
            progressed = false;
            if (rng_state)
                for (unsigned i = 31; i > 0; --i) std::swap(lanes[i], lanes[next_random() % (i + 1)]);
            for (unsigned l : lanes) {
                Thread& th = threads[w * 32 + l];
                if (!runnable(th)) continue;
                th.waiting = nullptr;
                cur = &th;
                thread_idx = Dim3{w * 32 + l, 0, 0};
                swapcontext(&scheduler, &th.ctx);
                if (aborted) return false;
                if (th.done) --live;
                progressed = true;
            }
        }
    }
    return true;
}
}  // namespace

void sync_block(int line) { arrive(block_bar, line, "__syncthreads()"); }

void misaligned(int line, const void* p, unsigned align, const char* what)
{
    set_error("misaligned address: %s at line %d of %p, which is not a multiple of %u bytes", what, line, p, align);
    fail_in_thread();
}

void warp_gather(int line, unsigned mask, uint64_t mine, uint64_t* all)
{
    if (mask != 0xffffffffu) {
        set_error("warp collective at line %d with lane mask 0x%08x: the emulator supports full warps only",
                  line, mask);
        fail_in_thread();
    }
    Warp& w = warps[thread_idx.x / 32];
    w.vals[thread_idx.x & 31] = mine;
    arrive(w.bar, line, "warp collective");      // all 32 values are in
    memcpy(all, w.vals, sizeof w.vals);
    arrive(w.bar, line, "warp collective");      // all 32 lanes have read them
}

void register_kernel(const char* name, const char* signature, void* fn, Invoker invoke)
{
    kernels()[name] = Kernel{signature, fn, invoke};
}
}  // namespace simt

using namespace simt;

extern "C" const char* simt_error() { return error.c_str(); }

extern "C" const char* simt_signature(const char* name)
{
    auto it = kernels().find(name);
    return it == kernels().end() ? nullptr : it->second.signature.c_str();
}

extern "C" const char* simt_kernel_names()
{
    static std::string names;
    names.clear();
    for (auto& kv : kernels()) names += (names.empty() ? "" : ",") + kv.first;
    return names.c_str();
}

// AddressSanitizer prints where in the kernel source; this adds which thread of which launch
static void asan_death_note()
{
    fprintf(stderr, "SIMT emulator: the error above happened in kernel %s, block %u, thread %u\n", cur_name,
            block_idx.x, thread_idx.x);
}

extern "C" int simt_launch(const char* name, unsigned grid, unsigned block, void** params, uint64_t seed)
{
    if (__asan_set_death_callback != nullptr) __asan_set_death_callback(asan_death_note);
    error.clear();
    aborted = false;
    auto it = kernels().find(name);
    if (it == kernels().end()) { error = std::string("no kernel named ") + name; return 1; }
    if (grid == 0 || block == 0 || block % 32 != 0 || block > 1024) {
        error = "launch of " + std::string(name) + " with grid " + std::to_string(grid) + ", block " +
                std::to_string(block) + ": need grid >= 1 and a block of 32..1024 threads, a multiple of 32";
        return 1;
    }
    cur_kernel = &it->second;
    cur_params = params;
    cur_name = it->first.c_str();
    rng_state = seed ? seed * 0x9E3779B97F4A7C15ULL + 1 : 0;
    grid_dim = Dim3{grid, 1, 1};
    block_dim = Dim3{block, 1, 1};
    std::vector<unsigned> blocks(grid);
    for (unsigned b = 0; b < grid; ++b) blocks[b] = b;
    if (rng_state)
        for (unsigned i = grid - 1; i > 0; --i) std::swap(blocks[i], blocks[next_random() % (i + 1)]);
    for (unsigned b : blocks) {
        block_idx = Dim3{b, 0, 0};
        if (!run_block()) return 2;
    }
    return 0;
}

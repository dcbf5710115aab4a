// registry.h -- how a kernel of an emulated .cu source becomes launchable by name (runtime.cpp).
//
// SIMT_KERNEL(name) records the kernel's parameter signature ("p" pointer, "iN" N-byte integer,
// "fN" N-byte float) and an invoker that calls it with parameters given as an array of pointers
// to their values (the cuLaunchKernel convention). The Python side checks every argument it
// passes against the signature, so a loader that passes an int32 where the kernel takes an int64
// (which CuPy would pass on as 4 bytes, silently) is an error here.
#pragma once

#include "simt.h"

#include <string>
#include <type_traits>
#include <utility>

namespace simt {
typedef void (*Invoker)(void* fn, void** params);
void register_kernel(const char* name, const char* signature, void* fn, Invoker invoke);

template <class T> std::string kind()
{
    static_assert(std::is_pointer<T>::value || std::is_arithmetic<T>::value,
                  "the emulator passes pointers and arithmetic scalars only");
    if (std::is_pointer<T>::value) return "p";
    return std::string(std::is_floating_point<T>::value ? "f" : "i") + std::to_string(sizeof(T));
}

template <class... A> struct Launcher {
    static std::string signature()
    {
        std::string s;
        const std::string parts[] = {kind<typename std::decay<A>::type>()..., ""};
        for (size_t i = 0; i + 1 < sizeof...(A) + 1; ++i) s += (i ? "," : "") + parts[i];
        return s;
    }
    template <size_t... I> static void call(void* fn, void** p, std::index_sequence<I...>)
    {
        reinterpret_cast<void (*)(A...)>(fn)(*static_cast<typename std::decay<A>::type*>(p[I])...);
    }
    static void invoke(void* fn, void** p) { call(fn, p, std::index_sequence_for<A...>{}); }
};

struct Registrar {
    template <class... A> Registrar(const char* name, void (*fn)(A...))
    {
        // no function-local static here: shared.ld gathers those of the wrappers as shared memory
        const std::string sig = Launcher<A...>::signature();
        register_kernel(name, sig.c_str(), reinterpret_cast<void*>(fn), &Launcher<A...>::invoke);
    }
};
}  // namespace simt

#define SIMT_KERNEL(name) static ::simt::Registrar simt_registrar_##name(#name, &name);

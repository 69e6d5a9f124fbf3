// Shared by the training kernels (fused.cc, layout.cc): the per-ISA function clones and the
// raw-address cast of the buffers handed over from Python.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define BITNAS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BITNAS_CLONES
#endif

namespace bitnas_kernels {

// The buffer at address `p` (a tensor's data_ptr() passed from Python) as T*.
template <class T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace bitnas_kernels

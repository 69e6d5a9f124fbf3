// Shared by the AVX-512 units (kernels_avx512.cc, dense_avx512.cc), which alone include this
// header: both are compiled with the AVX-512 flags. Internal linkage only (see detail.h), plus the
// functions each unit exports to the other and to the avx512 row's table.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "engine.h"

namespace bitnas {
namespace {

inline __mmask16 lanes16(int valid) { return valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1); }

}  // namespace

// The avx512 row's output transform (kernels_avx512.cc) and dense cores (dense_avx512.cc).
namespace avx512 {
void epilogue(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout, const EpiParams& p,
              const EpiIO& io);
std::int64_t prepare_dense(const word_t* canon, const Geom& g, word_t* out);
std::int64_t dense_scratch(const Geom& g, int tile);
void dense(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
           std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld, void* scratch);
void dense_fused(const Framed& src, const Geom& g, const void* wts, std::int64_t pix_begin, std::int64_t pix_end,
                 const EpiParams& p, const EpiIO& io, void* scratch);
}  // namespace avx512

}  // namespace bitnas

// Helpers of the AVX-512 units (kernels_avx512.cc, dense_avx512.cc), which alone include this
// header: both are compiled with the AVX-512 flags. Internal linkage only (see detail.h), plus the
// dense cores dense_avx512.cc exports to the avx512 row's table.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "engine.h"

namespace bitnas {
namespace {

inline __mmask16 lanes16(int valid) { return valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1); }

// The output transform of 16 channels from o (m: the valid ones) of one pixel, whose exact dot
// products are `di` (lanes outside m zero): every step in registers, the same float operations in
// the same order as the reference. Pointers are the pixel's rows (nullptr when absent); `bits`
// words are ORed into, so the caller zeroes them first (o & 63 + 16 never crosses a word: o is a
// multiple of 16).
inline void epilogue16(__m512i di, const float* res, const float* post, float* out, std::int32_t* ints, word_t* bits,
                       int o, __mmask16 m, const EpiParams& p, bool threshold) {
  const __m512 zero = _mm512_setzero_ps();
  if (ints) _mm512_mask_storeu_epi32(ints + o, m, di);
  if (threshold) {
    if (bits) {
      const __m512i s = _mm512_mullo_epi32(di, _mm512_maskz_loadu_epi32(m, p.thr_sign + o));
      const __mmask16 neg = _mm512_mask_cmplt_epi32_mask(m, s, _mm512_maskz_loadu_epi32(m, p.thr + o));
      bits[o >> 6] |= word_t(neg) << (o & 63);
    }
    return;
  }
  if (!out && !bits) return;
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(di), _mm512_maskz_loadu_ps(m, p.mul + o));
  v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p.add + o));
  if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res + o));
  if (p.act == kActRelu) {
    v = _mm512_max_ps(v, zero);
  } else if (p.act == kActPrelu) {
    const __m512 neg = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.slope + o), v);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), neg, v);
  } else if (p.act == kActRprelu) {
    __m512 u = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(m, p.shift_in + o));
    const __m512 neg = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p.slope + o), u);
    u = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(u, zero, _CMP_GT_OQ), neg, u);
    v = _mm512_add_ps(u, _mm512_maskz_loadu_ps(m, p.shift_out + o));
  }
  if (post) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, post + o));
  if (out) _mm512_mask_storeu_ps(out + o, m, v);
  if (bits) {
    if (p.bits_scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, p.bits_scale + o));
    if (p.bits_shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, p.bits_shift + o));
    bits[o >> 6] |= word_t(_mm512_mask_cmp_ps_mask(m, v, zero, _CMP_LT_OQ)) << (o & 63);
  }
}

// The output transform of `npix` consecutive output pixels from flat index pix0 (Kernels::epilogue).
inline void epilogue_rows(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                          const EpiParams& p, const EpiIO& io) {
  const int nw = words_for(cout);
  for (int i = 0; i < npix; ++i) {
    const std::int64_t pix = pix0 + i;
    const float* res = io.res ? io.res + pix * io.res_ld : nullptr;
    const float* post = io.post ? io.post + pix * io.post_ld : nullptr;
    float* out = io.out ? io.out + pix * io.out_ld : nullptr;
    std::int32_t* ints = io.ints ? io.ints + pix * io.ints_ld : nullptr;
    word_t* bits = io.bits ? io.bits + pix * nw : nullptr;
    if (bits) std::memset(bits, 0, sizeof(word_t) * nw);
    for (int o = 0; o < cout; o += 16) {
      const __mmask16 m = lanes16(cout - o);
      epilogue16(_mm512_maskz_loadu_epi32(m, dot + i * dot_ld + o), res, post, out, ints, bits, o, m, p, io.threshold);
    }
  }
}

}  // namespace

// The avx512 row's dense cores (dense_avx512.cc), for its Kernels table.
namespace avx512 {
std::int64_t prepare_dense(const word_t* canon, const Geom& g, word_t* out);
std::int64_t dense_scratch(const Geom& g, int tile);
void dense(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
           std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld, void* scratch);
void dense_fused(const Framed& src, const Geom& g, const void* wts, const std::int32_t* wsum, std::int64_t pix_begin,
                 std::int64_t pix_end, const EpiParams& p, const EpiIO& io, void* scratch);
}  // namespace avx512

}  // namespace bitnas

// AVX-512 kernels (x86-64 with AVX-512 F, BW, VL and VPOPCNTDQ; compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq, chosen at run time from cpuid and XGETBV):
// packing, the output transform, the depthwise core and the row's table; the dense cores live in
// dense_avx512.cc.
//
// Packing compares 16 floats to zero into a 16-bit mask; the output transform runs 16 channels
// per vector with masked loads and stores (tails cost nothing) and writes the next layer's bits
// from the compare masks; the depthwise core adds 64 int8 lanes per instruction.
//
// This unit uses no standard-library templates, so nothing compiled here with AVX-512 is shared
// with the portable code (see detail.h).
#include "engine.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "avx512.h"
#include "detail.h"

namespace bitnas {
namespace {

// ------------------------------------------------------------------ bit-packing of activations

void pack_avx512(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale,
                 const float* shift, word_t* out) {
  const int nw = words_for(c);
  const __m512 zero = _mm512_setzero_ps();
  for (std::int64_t p = 0; p < npix; ++p) {
    const float* xp = x + p * ld;
    word_t* o = out + p * nw;
    for (int w = 0; w < nw; ++w) {
      word_t bits = 0;
      for (int j = 0; j < 4; ++j) {
        const int ch = 64 * w + 16 * j;
        if (ch >= c) break;
        const __mmask16 m = lanes16(c - ch);
        __m512 v = _mm512_maskz_loadu_ps(m, xp + ch);
        if (scale) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, scale + ch));
        if (shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, shift + ch));
        bits |= word_t(_mm512_mask_cmp_ps_mask(m, v, zero, _CMP_LT_OQ)) << (16 * j);
      }
      o[w] = bits;
    }
  }
}

// ------------------------------------------------------------------ depthwise core

// 64 sign bytes per word: the word is the byte mask of a blend between +1 and -1.
void expand_avx512(const word_t* px, std::int64_t npix, int in_words, int cpad, std::int8_t* out) {
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  const int chunks = cpad / 64;
  for (std::int64_t p = 0; p < npix; ++p) {
    const word_t* w = px + p * in_words;
    std::int8_t* o = out + p * cpad;
    for (int c = 0; c < chunks; ++c) _mm512_storeu_si512(o + 64 * c, _mm512_mask_blend_epi8(__mmask64(w[c]), plus, minus));
  }
}

// Sign bytes x (+1/-1 inside, the padding value outside) times weights w in {+1, -1}, 64
// channels per vector, summed in int8 lanes (|sum| <= taps <= 127, so wrap-around is harmless).
// x * w = x ^ m + [w < 0] with m = 0xff where w < 0 (~x = -x - 1), so each tap is one XOR and one
// add, the [w < 0] counts start the sum. Loop order: 64-channel chunks outside, so a 3x3 or 5x5
// kernel's masks stay in registers for the whole band. KH = KW = 0: sizes from g.
template <int KH, int KW>
void depthwise_impl(const std::int8_t* img, int img_w, int cpad, int row0, int col0, const std::int8_t* wts,
                    const Geom& g, int oy_begin, int oy_end, std::int32_t* dot, std::int64_t dot_ld) {
  constexpr int kTaps = KH * KW > 0 ? KH * KW : 1;
  const int kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, taps = kh * kw;
  const std::int64_t row_step = std::int64_t(g.dh) * img_w * cpad, col_step = std::int64_t(g.dw) * cpad;
  const __m512i zero = _mm512_setzero_si512();
  for (int c = 0; c < cpad / 64; ++c) {
    __m512i m[kTaps];
    __m512i bias = zero;
    for (int t = 0; t < taps; ++t) {
      const __m512i mt = _mm512_movm_epi8(_mm512_movepi8_mask(_mm512_loadu_si512(wts + std::int64_t(t) * cpad + 64 * c)));
      bias = _mm512_sub_epi8(bias, mt);
      if (KH) m[t] = mt;
    }
    for (int oy = oy_begin; oy < oy_end; ++oy)
      for (int ox = 0; ox < g.ow; ++ox) {
        const std::int8_t* x0 =
            img + (std::int64_t(oy * g.sh - g.pt - row0) * img_w + (ox * g.sw - g.pl - col0)) * cpad + 64 * c;
        __m512i acc = bias;
        for (int ky = 0; ky < kh; ++ky)
          for (int kx = 0; kx < kw; ++kx) {
            const int t = ky * kw + kx;
            const __m512i mt = KH ? m[t]
                                  : _mm512_movm_epi8(_mm512_movepi8_mask(
                                        _mm512_loadu_si512(wts + std::int64_t(t) * cpad + 64 * c)));
            const __m512i x = _mm512_loadu_si512(x0 + ky * row_step + kx * col_step);
            acc = _mm512_add_epi8(acc, _mm512_xor_si512(x, mt));
          }
        std::int32_t* dc = dot + (std::int64_t(oy - oy_begin) * g.ow + ox) * dot_ld + 64 * c;
        for (int q = 0; q < 4; ++q)
          _mm512_storeu_si512(dc + 16 * q, _mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(acc, q)));
      }
  }
}

const Kernels kAvx512 = {
    "avx512", pack_avx512, epilogue_rows, avx512::dense, avx512::dense_scratch, avx512::prepare_dense,
    expand_avx512, depthwise_entry<depthwise_impl<3, 3>, depthwise_impl<5, 5>, depthwise_impl<0, 0>>,
    avx512::dense_fused,
};

}  // namespace

const Kernels* kernels_avx512() { return &kAvx512; }

}  // namespace bitnas

#else  // not x86-64: no AVX-512 kernels

namespace bitnas {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace bitnas

#endif

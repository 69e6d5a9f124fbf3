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

// ------------------------------------------------------------------ output transform

// The output transform of 16 channels from o (m: the valid ones) of one pixel, whose exact dot
// products are `di`, any combination of outputs: every step in registers, the same float
// operations in the same order as the reference. Pointers are the pixel's rows (nullptr when
// absent); `bits` words are ORed into, so the caller zeroes them first (o is a multiple of 16, so
// 16 bits never cross a word).
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

// Loads and stores of 16 lanes: whole vectors (kFull: plain, so loads fold into the arithmetic)
// or the masked tail of a row.
template <bool kFull>
struct Lanes {
  __mmask16 m;
  __m512 load(const float* p) const { return kFull ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p); }
  __m512i load(const std::int32_t* p) const { return kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p); }
  void store(float* p, __m512 v) const {
    if (kFull)
      _mm512_storeu_ps(p, v);
    else
      _mm512_mask_storeu_ps(p, m, v);
  }
};

// One combination of outputs, the pixel loop and the channel loop free of its tests: float
// outputs (kOut) and/or the next layer's bits (kBits), a residual (kRes), an addend (kPost),
// activation kAct; the same operations, in the same order, as epilogue16. Channels o .. o + 15
// of one pixel; `word` gathers the bits of the current 64 channels.
template <bool kRes, bool kPost, bool kOut, bool kBits, int kAct, bool kFull>
inline void epilogue_step(Lanes<kFull> l, int o, int cout, const std::int32_t* d, const float* res, const float* post,
                          float* out, word_t* bits, word_t& word, const EpiParams& p) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(l.load(d + o)), l.load(p.mul + o));
  v = _mm512_add_ps(v, l.load(p.add + o));
  if (kRes) v = _mm512_add_ps(v, l.load(res + o));
  if (kAct == kActRelu) {
    v = _mm512_max_ps(v, zero);
  } else if (kAct == kActPrelu) {
    const __m512 neg = _mm512_mul_ps(l.load(p.slope + o), v);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ), neg, v);
  } else if (kAct == kActRprelu) {
    __m512 u = _mm512_sub_ps(v, l.load(p.shift_in + o));
    const __m512 neg = _mm512_mul_ps(l.load(p.slope + o), u);
    u = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(u, zero, _CMP_GT_OQ), neg, u);
    v = _mm512_add_ps(u, l.load(p.shift_out + o));
  }
  if (kPost) v = _mm512_add_ps(v, l.load(post + o));
  if (kOut) l.store(out + o, v);
  if (kBits) {
    if (p.bits_scale) v = _mm512_mul_ps(v, l.load(p.bits_scale + o));
    if (p.bits_shift) v = _mm512_add_ps(v, l.load(p.bits_shift + o));
    word |= word_t(_mm512_mask_cmp_ps_mask(l.m, v, zero, _CMP_LT_OQ)) << (o & 63);
    if ((o & 63) == 48 || o + 16 >= cout) {
      bits[o >> 6] = word;
      word = 0;
    }
  }
}

template <bool kRes, bool kPost, bool kOut, bool kBits, int kAct>
void epilogue_rows(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                   const EpiParams& params, const EpiIO& io) {
  const int nw = words_for(cout);
  const EpiParams p = params;  // a local copy: the float stores cannot alias its pointers
  for (int i = 0; i < npix; ++i) {
    const std::int64_t pix = pix0 + i;
    const std::int32_t* d = dot + i * dot_ld;
    const float* res = kRes ? io.res + pix * io.res_ld : nullptr;
    const float* post = kPost ? io.post + pix * io.post_ld : nullptr;
    float* out = kOut ? io.out + pix * io.out_ld : nullptr;
    word_t* bits = kBits ? io.bits + pix * nw : nullptr;
    word_t word = 0;
    int o = 0;
    for (; o + 16 <= cout; o += 16)
      epilogue_step<kRes, kPost, kOut, kBits, kAct>(Lanes<true>{0xffff}, o, cout, d, res, post, out, bits, word, p);
    if (o < cout)
      epilogue_step<kRes, kPost, kOut, kBits, kAct>(Lanes<false>{lanes16(cout - o)}, o, cout, d, res, post, out, bits,
                                                    word, p);
  }
}

// Threshold mode without integers: bits straight from the counts (dot * thr_sign < thr).
void threshold_rows(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                    const EpiParams& p, const EpiIO& io) {
  const int nw = words_for(cout);
  for (int i = 0; i < npix; ++i) {
    const std::int32_t* d = dot + i * dot_ld;
    word_t* bits = io.bits + (pix0 + i) * nw;
    word_t word = 0;
    for (int o = 0; o < cout; o += 16) {
      const __mmask16 m = lanes16(cout - o);
      const __m512i s = _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, d + o), _mm512_maskz_loadu_epi32(m, p.thr_sign + o));
      word |= word_t(_mm512_mask_cmplt_epi32_mask(m, s, _mm512_maskz_loadu_epi32(m, p.thr + o))) << (o & 63);
      if ((o & 63) == 48 || o + 16 >= cout) {
        bits[o >> 6] = word;
        word = 0;
      }
    }
  }
}

// Any combination (integers too): epilogue16 per 16 channels.
void general_rows(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
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

using Rows = void (*)(const std::int32_t*, std::int64_t, int, std::int64_t, int, const EpiParams&, const EpiIO&);

template <int kIndex>
constexpr Rows rows_at() {
  return epilogue_rows<(kIndex & 1) != 0, (kIndex & 2) != 0, (kIndex & 4) != 0, (kIndex & 8) != 0, kIndex / 16>;
}

template <int... kI>
struct RowsTable {
  static constexpr Rows table[sizeof...(kI)] = {rows_at<kI>()...};
};

template <int... kI>
constexpr Rows RowsTable<kI...>::table[sizeof...(kI)];

// Index: residual 1, addend 2, floats 4, bits 8, plus 16 x activation.
using AllRows = RowsTable<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                          26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
                          49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63>;

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
    "avx512", pack_avx512, avx512::epilogue, avx512::dense, avx512::dense_scratch, avx512::prepare_dense,
    expand_avx512, depthwise_entry<depthwise_impl<3, 3>, depthwise_impl<5, 5>, depthwise_impl<0, 0>>,
    avx512::dense_fused,
};

}  // namespace

namespace avx512 {

// The output transform, its combination of outputs chosen once per call.
void epilogue(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout, const EpiParams& p,
              const EpiIO& io) {
  if (io.ints || (io.threshold && !io.bits)) return general_rows(dot, dot_ld, npix, pix0, cout, p, io);
  if (io.threshold) return threshold_rows(dot, dot_ld, npix, pix0, cout, p, io);
  if (!io.out && !io.bits) return;
  const int index = (io.res ? 1 : 0) | (io.post ? 2 : 0) | (io.out ? 4 : 0) | (io.bits ? 8 : 0) | 16 * p.act;
  AllRows::table[index](dot, dot_ld, npix, pix0, cout, p, io);
}

}  // namespace avx512

const Kernels* kernels_avx512() { return &kAvx512; }

}  // namespace bitnas

#else  // not x86-64: no AVX-512 kernels

namespace bitnas {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace bitnas

#endif

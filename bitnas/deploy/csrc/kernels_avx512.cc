// AVX-512 kernels (x86-64 with AVX-512 F, BW, VL and VPOPCNTDQ; compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vpopcntdq, chosen at run time from cpuid and XGETBV).
//
// Binary conv core: VPOPCNTQ counts the bits of eight 64-bit words in one instruction. Weights
// are laid out in vectors of 8 output channels (one 64-bit word per lane, k words per vector);
// an activation word is broadcast (embedded {1to8} in the XOR), so one output pixel x 8 output
// channels x 64 input bits costs vpxorq + vpopcntq + vpaddq. Register block: 6 pixels x up to 4
// vectors (32 output channels) = 24 accumulators + 4 weight registers of the 32 zmm.
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

#include "detail.h"

namespace bitnas {
namespace {

inline __mmask16 lanes16(int valid) { return valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1); }

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

// 16 channels from o (m: the valid ones) of one pixel, every step in registers, the same float
// operations in the same order as the reference.
inline void epilogue16(const std::int32_t* d, const float* res, const float* post, float* out, std::int32_t* ints,
                       word_t* bits, int o, __mmask16 m, const EpiParams& p, bool threshold) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512i di = _mm512_maskz_loadu_epi32(m, d + o);
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

void epilogue_avx512(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
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
    for (int o = 0; o < cout; o += 16)
      epilogue16(dot + i * dot_ld, res, post, out, ints, bits, o, lanes16(cout - o), p, io.threshold);
  }
}

// ------------------------------------------------------------------ dense binary conv core

constexpr int kLanes = 8;    // output channels per weight vector
constexpr int kVecs = 4;     // weight vectors per register block
constexpr int kPixels = 6;   // output pixels per register block

// Weights of one group: ceil(cout_g / 8) vectors, each [k][8] words (zero for missing channels).
std::int64_t prepare_dense_avx512(const word_t* canon, const Geom& g, word_t* out) {
  const int og = g.cout_g(), k = g.taps() * g.g_words();
  const int nv = (og + kLanes - 1) / kLanes;
  const std::int64_t n = std::int64_t(nv) * k * kLanes;
  if (!out) return n;
  for (int v = 0; v < nv; ++v)
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < kLanes; ++j) {
        const int o = v * kLanes + j;
        out[(std::int64_t(v) * k + i) * kLanes + j] = o < og ? canon[std::int64_t(o) * k + i] : 0;
      }
  return n;
}

struct Scratch {
  word_t* act;  // [tile rounded up to kPixels][k] words
  int* n_oob;
  int* oob;
};

Scratch carve(void* scratch, const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  Scratch s;
  s.act = static_cast<word_t*>(scratch);
  s.n_oob = reinterpret_cast<int*>(s.act + k * (tile + kPixels));
  s.oob = s.n_oob + tile;
  return s;
}

std::int64_t dense_scratch_avx512(const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  return 8 * k * (tile + kPixels) + std::int64_t(tile) * (1 + g.taps()) * 4 + 64;
}

// kPixels pixels x B weight vectors: popcounts of (activation ^ weight) over k words, then
// dot = kbits - 2 * count written to rows p of dot (only the first `rows` pixels and the first
// `valid` of the block's B * 8 channels). Two vectors' 64-bit counts (each < 2^32) become 16
// int32 in channel order with one vpermt2d.
template <int B>
inline void micro_kernel(const word_t* act, int k, const word_t* wts, std::int64_t wstride, int rows, int valid,
                         std::int32_t* dot, std::int64_t dot_ld, std::int32_t kbits) {
  __m512i acc[kPixels][B];
  for (int p = 0; p < kPixels; ++p)
    for (int b = 0; b < B; ++b) acc[p][b] = _mm512_setzero_si512();
  for (int i = 0; i < k; ++i) {
    __m512i w[B];
    for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_si512(wts + b * wstride + std::int64_t(i) * kLanes);
    for (int p = 0; p < kPixels; ++p) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(act[std::int64_t(p) * k + i]));
      for (int b = 0; b < B; ++b) acc[p][b] = _mm512_add_epi64(acc[p][b], _mm512_popcnt_epi64(_mm512_xor_si512(a, w[b])));
    }
  }
  const __m512i kb = _mm512_set1_epi32(kbits);
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int p = 0; p < rows; ++p) {
    for (int b = 0; b + 1 < B; b += 2) {
      const __m512i pop = _mm512_permutex2var_epi32(acc[p][b], low_halves, acc[p][b + 1]);
      const int n = imin(16, valid - b * kLanes);
      _mm512_mask_storeu_epi32(dot + p * dot_ld + b * kLanes, lanes16(n), _mm512_sub_epi32(kb, _mm512_add_epi32(pop, pop)));
    }
    if (B % 2) {
      const __m256i pop = _mm512_cvtepi64_epi32(acc[p][B - 1]);
      const int n = valid - (B - 1) * kLanes;
      _mm256_mask_storeu_epi32(dot + p * dot_ld + (B - 1) * kLanes, __mmask8((1u << n) - 1),
                               _mm256_sub_epi32(_mm512_castsi512_si256(kb), _mm256_add_epi32(pop, pop)));
    }
  }
}

void dense_avx512(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
                  std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld,
                  void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = g.taps() * g.g_words(), og = g.cout_g(), o0 = group * og;
  Scratch s = carve(scratch, g, tile);
  gather_tile(in, g, group, pix_begin, tile, s.n_oob, s.oob,
              [&](int p, int i, word_t v) { s.act[std::int64_t(p) * k + i] = v; });
  const int padded = (tile + kPixels - 1) / kPixels * kPixels;
  std::memset(s.act + std::int64_t(tile) * k, 0, sizeof(word_t) * k * (padded - tile));
  const std::int32_t kbits = g.taps() * g.cin_g();
  const word_t* w = static_cast<const word_t*>(wts);
  const std::int64_t wstride = std::int64_t(k) * kLanes;
  const int nv = (og + kLanes - 1) / kLanes;
  for (int v0 = 0; v0 < nv; v0 += kVecs) {
    const int nb = imin(kVecs, nv - v0);
    const int valid = imin(nb * kLanes, og - v0 * kLanes);
    const word_t* wv = w + v0 * wstride;
    for (int p = 0; p < tile; p += kPixels) {
      const word_t* a = s.act + std::int64_t(p) * k;
      std::int32_t* d = dot + std::int64_t(p) * dot_ld + o0 + v0 * kLanes;
      const int rows = imin(kPixels, tile - p);
      switch (nb) {
        case 4: micro_kernel<4>(a, k, wv, wstride, rows, valid, d, dot_ld, kbits); break;
        case 3: micro_kernel<3>(a, k, wv, wstride, rows, valid, d, dot_ld, kbits); break;
        case 2: micro_kernel<2>(a, k, wv, wstride, rows, valid, d, dot_ld, kbits); break;
        default: micro_kernel<1>(a, k, wv, wstride, rows, valid, d, dot_ld, kbits); break;
      }
    }
  }
  correct_tile(g, group, dot, dot_ld, tile, s.n_oob, s.oob, wsum);
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
    "avx512", pack_avx512, epilogue_avx512, dense_avx512, dense_scratch_avx512, prepare_dense_avx512,
    expand_avx512, depthwise_entry<depthwise_impl<3, 3>, depthwise_impl<5, 5>, depthwise_impl<0, 0>>,
};

}  // namespace

const Kernels* kernels_avx512() { return &kAvx512; }

}  // namespace bitnas

#else  // not x86-64: no AVX-512 kernels

namespace bitnas {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace bitnas

#endif

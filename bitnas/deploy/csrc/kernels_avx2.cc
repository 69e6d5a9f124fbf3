// AVX2 kernels (x86-64 with AVX2, FMA, POPCNT, BMI2; compiled with -mavx2 -mfma -mpopcnt -mbmi2).
//
// Binary conv core: AVX2 has no vector popcount, so bytes are counted with the nibble lookup
// (vpshufb on a 16-entry table). Both operands are kept "nibble-split": a word w is stored as
// lo = w & 0x0f.. and hi = (w >> 4) & 0x0f.., and since (a ^ w) & m = (a & m) ^ (w & m), one
// XOR of split operands feeds vpshufb directly. Per 256 binary MACs (4 output channels x 64
// channels of one pixel): 2 XOR + 2 vpshufb + 2 byte adds. Byte counters take at most 31 words
// (31 * 8 < 256) before vpsadbw folds them into 64-bit sums. Register block: P output pixels
// (activation words broadcast) x 8 output channels (two vectors of 4 channels).
//
// This unit uses no standard-library templates, so nothing compiled here with AVX2 is shared
// with the portable code (see detail.h).
#include "engine.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "detail.h"

namespace bitnas {
namespace {

constexpr word_t kLoNibbles = 0x0f0f0f0f0f0f0f0fULL;
constexpr int kBlock = 8;       // output channels per weight block (two vectors of 4)
constexpr int kMaxChunk = 31;   // words counted in bytes before folding

inline __m256i lookup_table() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3,
                          2, 3, 3, 4);
}

// ------------------------------------------------------------------ bit-packing of activations

inline word_t pack64(const float* x, const float* scale, const float* shift, int ch0) {
  const __m256 zero = _mm256_setzero_ps();
  word_t bits = 0;
  for (int j = 0; j < 8; ++j) {
    __m256 v = _mm256_loadu_ps(x + 8 * j);
    if (scale) v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + ch0 + 8 * j));
    if (shift) v = _mm256_add_ps(v, _mm256_loadu_ps(shift + ch0 + 8 * j));
    bits |= word_t(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)))) << (8 * j);
  }
  return bits;
}

void pack_avx2(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale,
               const float* shift, word_t* out) {
  const int nw = words_for(c), full = c / 64;
  for (std::int64_t p = 0; p < npix; ++p) {
    const float* xp = x + p * ld;
    word_t* o = out + p * nw;
    for (int w = 0; w < full; ++w) o[w] = pack64(xp + 64 * w, scale, shift, 64 * w);
    if (full < nw) {
      word_t bits = 0;
      for (int ch = 64 * full; ch < c; ++ch) {
        float v = xp[ch];
        if (scale) v = v * scale[ch];
        if (shift) v = v + shift[ch];
        bits |= word_t(v < 0.0f) << (ch - 64 * full);
      }
      o[full] = bits;
    }
  }
}

// ------------------------------------------------------------------ output transform

// Lanes below `valid` set (masked loads/stores of fewer than 8 channels).
inline __m256i tail_mask(int valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The output transform of one pixel, 8 channels at a time, every step in registers. When the
// channel count is not a multiple of 8 (and at least 8), the last group is channels cout-8..cout-1,
// overlapping the one before: those values are computed twice, identically, and no masked store
// is needed (masked stores are slow on AMD cores). Below 8 channels, masked loads and stores.
inline void or_bits(word_t* bits, int pos, unsigned m) {
  bits[pos >> 6] |= word_t(m) << (pos & 63);
  if ((pos & 63) > 56) bits[(pos >> 6) + 1] |= word_t(m) >> (64 - (pos & 63));
}

struct PixelIO {
  const std::int32_t* d;
  const float* res;
  const float* post;
  float* out;
  std::int32_t* ints;
  word_t* bits;
};

template <bool SMALL>
inline void epilogue_group(const PixelIO& px, int o, const EpiParams& p, const EpiIO& io, __m256i tmask,
                           unsigned keep) {
  const __m256 zero = _mm256_setzero_ps();
  auto ld = [&](const float* a) { return SMALL ? _mm256_maskload_ps(a, tmask) : _mm256_loadu_ps(a); };
  auto ldi = [&](const std::int32_t* a) {
    return SMALL ? _mm256_maskload_epi32(a, tmask) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
  };
  const __m256i di = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(px.d + o));  // dot rows are padded
  if (px.ints) {
    if (SMALL) _mm256_maskstore_epi32(px.ints + o, tmask, di);
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(px.ints + o), di);
  }
  if (io.threshold) {
    if (px.bits) {
      const __m256i sgn = _mm256_sign_epi32(di, ldi(p.thr_sign + o));
      const __m256i neg = _mm256_cmpgt_epi32(ldi(p.thr + o), sgn);
      or_bits(px.bits, o, unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(neg))) & keep);
    }
    return;
  }
  if (!px.out && !px.bits) return;
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(di), ld(p.mul + o));
  v = _mm256_add_ps(v, ld(p.add + o));
  if (px.res) v = _mm256_add_ps(v, ld(px.res + o));
  if (p.act == kActRelu) {
    v = _mm256_max_ps(v, zero);
  } else if (p.act == kActPrelu) {
    const __m256 neg = _mm256_mul_ps(ld(p.slope + o), v);
    v = _mm256_blendv_ps(neg, v, _mm256_cmp_ps(v, zero, _CMP_GT_OQ));
  } else if (p.act == kActRprelu) {
    __m256 u = _mm256_sub_ps(v, ld(p.shift_in + o));
    const __m256 neg = _mm256_mul_ps(ld(p.slope + o), u);
    u = _mm256_blendv_ps(neg, u, _mm256_cmp_ps(u, zero, _CMP_GT_OQ));
    v = _mm256_add_ps(u, ld(p.shift_out + o));
  }
  if (px.post) v = _mm256_add_ps(v, ld(px.post + o));
  if (px.out) {
    if (SMALL) _mm256_maskstore_ps(px.out + o, tmask, v);
    else _mm256_storeu_ps(px.out + o, v);
  }
  if (px.bits) {
    if (p.bits_scale) v = _mm256_mul_ps(v, ld(p.bits_scale + o));
    if (p.bits_shift) v = _mm256_add_ps(v, ld(p.bits_shift + o));
    or_bits(px.bits, o, unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ))) & keep);
  }
}

void epilogue_avx2(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                   const EpiParams& p, const EpiIO& io) {
  const int nw = words_for(cout);
  const bool small = cout < 8;
  const __m256i tmask = tail_mask(small ? cout : 8);
  const int last = cout % 8 ? cout - 8 : -1;  // the overlapping last group, if any
  for (int i = 0; i < npix; ++i) {
    const std::int64_t pix = pix0 + i;
    PixelIO px{dot + i * dot_ld, io.res ? io.res + pix * io.res_ld : nullptr,
               io.post ? io.post + pix * io.post_ld : nullptr, io.out ? io.out + pix * io.out_ld : nullptr,
               io.ints ? io.ints + pix * io.ints_ld : nullptr, io.bits ? io.bits + pix * nw : nullptr};
    if (px.bits) std::memset(px.bits, 0, sizeof(word_t) * nw);
    if (small) {
      epilogue_group<true>(px, 0, p, io, tmask, (1u << cout) - 1);
      continue;
    }
    for (int o = 0; o + 8 <= cout; o += 8) epilogue_group<false>(px, o, p, io, tmask, 0xffu);
    if (last >= 0) epilogue_group<false>(px, last, p, io, tmask, 0xffu);
  }
}

// ------------------------------------------------------------------ dense binary conv core

// Output channel (within a block of 8) held by each 64-bit lane of the two weight vectors: the
// first vector holds channels 0, 1, 4, 5 and the second 2, 3, 6, 7, so that one shuffle of their
// two popcount vectors (lanes_to_epi32) yields the 8 counts in channel order.
constexpr int kLaneChannel[8] = {0, 1, 4, 5, 2, 3, 6, 7};

// Weights of one group: blocks of 8 output channels; per block and word k: lo[8], hi[8] (lanes
// as kLaneChannel says), zero for missing channels.
std::int64_t prepare_dense_avx2(const word_t* canon, const Geom& g, word_t* out) {
  const int og = g.cout_g(), k = g.taps() * g.g_words();
  const int blocks = (og + kBlock - 1) / kBlock;
  const std::int64_t n = std::int64_t(blocks) * k * 2 * kBlock;
  if (!out) return n;
  for (int b = 0; b < blocks; ++b)
    for (int i = 0; i < k; ++i) {
      word_t* dst = out + (std::int64_t(b) * k + i) * 2 * kBlock;
      for (int j = 0; j < kBlock; ++j) {
        const int o = b * kBlock + kLaneChannel[j];
        const word_t w = o < og ? canon[std::int64_t(o) * k + i] : 0;
        dst[j] = w & kLoNibbles;
        dst[kBlock + j] = (w >> 4) & kLoNibbles;
      }
    }
  return n;
}

struct Scratch {
  word_t* act;  // [tile][k][2] split words
  int* n_oob;
  int* oob;
};

Scratch carve(void* scratch, const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  Scratch s;
  s.act = static_cast<word_t*>(scratch);
  s.n_oob = reinterpret_cast<int*>(s.act + 2 * k * (tile + 4));
  s.oob = s.n_oob + tile;
  return s;
}

std::int64_t dense_scratch_avx2(const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  return 16 * k * (tile + 4) + std::int64_t(tile) * (1 + g.taps()) * 4 + 64;
}

// The 64-bit counts of two vectors (lanes as kLaneChannel says; each count < 2^32) as 8 int32 in
// channel order: the low halves, interleaved by one shuffle.
inline __m256i lanes_to_epi32(__m256i a, __m256i b) {
  return _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), 0x88));
}

// Byte counts of (activation ^ weight) for words [k0, k1) (at most kMaxChunk) into acc[P][2];
// pixel p's split words are act[(p * k + i) * 2 + {0, 1}].
template <int P>
inline void count_bytes(const word_t* act, int k, const word_t* wts, int k0, int k1, __m256i (&acc)[P][2]) {
  const __m256i lut = lookup_table();
  for (int p = 0; p < P; ++p) acc[p][0] = acc[p][1] = _mm256_setzero_si256();
  for (int i = k0; i < k1; ++i) {
    const __m256i* w = reinterpret_cast<const __m256i*>(wts + std::int64_t(i) * 2 * kBlock);
    const __m256i wl0 = _mm256_loadu_si256(w), wl1 = _mm256_loadu_si256(w + 1);
    const __m256i wh0 = _mm256_loadu_si256(w + 2), wh1 = _mm256_loadu_si256(w + 3);
    for (int p = 0; p < P; ++p) {
      const word_t* a = act + (std::int64_t(p) * k + i) * 2;
      const __m256i al = _mm256_set1_epi64x(static_cast<long long>(a[0]));
      const __m256i ah = _mm256_set1_epi64x(static_cast<long long>(a[1]));
      acc[p][0] = _mm256_add_epi8(acc[p][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(al, wl0)));
      acc[p][1] = _mm256_add_epi8(acc[p][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(al, wl1)));
      acc[p][0] = _mm256_add_epi8(acc[p][0], _mm256_shuffle_epi8(lut, _mm256_xor_si256(ah, wh0)));
      acc[p][1] = _mm256_add_epi8(acc[p][1], _mm256_shuffle_epi8(lut, _mm256_xor_si256(ah, wh1)));
    }
  }
}

// P pixels x 8 output channels: popcounts of (activation ^ weight) over k words -> pop[P][8].
template <int P>
inline void micro_kernel(const word_t* act, int k, const word_t* wts, __m256i* pop) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[P][2];
  if (k <= kMaxChunk) {  // one chunk: byte counts straight to the result
    count_bytes<P>(act, k, wts, 0, k, acc);
    for (int p = 0; p < P; ++p)
      pop[p] = lanes_to_epi32(_mm256_sad_epu8(acc[p][0], zero), _mm256_sad_epu8(acc[p][1], zero));
    return;
  }
  __m256i total[P][2];
  for (int p = 0; p < P; ++p) total[p][0] = total[p][1] = zero;
  for (int k0 = 0; k0 < k; k0 += kMaxChunk) {
    count_bytes<P>(act, k, wts, k0, imin(k, k0 + kMaxChunk), acc);
    for (int p = 0; p < P; ++p) {
      total[p][0] = _mm256_add_epi64(total[p][0], _mm256_sad_epu8(acc[p][0], zero));
      total[p][1] = _mm256_add_epi64(total[p][1], _mm256_sad_epu8(acc[p][1], zero));
    }
  }
  for (int p = 0; p < P; ++p) pop[p] = lanes_to_epi32(total[p][0], total[p][1]);
}

constexpr int kPixels = 3;  // pixels per micro-kernel call

void dense_avx2(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
                std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld,
                void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = g.taps() * g.g_words(), og = g.cout_g(), taps = g.taps(), o0 = group * og;
  Scratch s = carve(scratch, g, tile);
  gather_tile(in, g, group, pix_begin, tile, s.n_oob, s.oob, [&](int p, int i, word_t v) {
    word_t* a = s.act + (std::int64_t(p) * k + i) * 2;
    a[0] = v & kLoNibbles;
    a[1] = (v >> 4) & kLoNibbles;
  });
  // Pad the gathered rows to a multiple of kPixels (the extra rows' results are dropped).
  const int padded = (tile + kPixels - 1) / kPixels * kPixels;
  std::memset(s.act + std::int64_t(tile) * k * 2, 0, sizeof(word_t) * k * 2 * (padded - tile));
  const __m256i kbits = _mm256_set1_epi32(taps * g.cin_g());
  const word_t* w = static_cast<const word_t*>(wts);
  const int blocks = (og + kBlock - 1) / kBlock;
  for (int b = 0; b < blocks; ++b) {
    const word_t* wb = w + std::int64_t(b) * k * 2 * kBlock;
    const int ob = b * kBlock, valid = imin(kBlock, og - ob);
    for (int p = 0; p < tile; p += kPixels) {
      __m256i pop[kPixels];
      micro_kernel<kPixels>(s.act + std::int64_t(p) * k * 2, k, wb, pop);
      for (int q = 0; q < kPixels && p + q < tile; ++q) {
        const __m256i d = _mm256_sub_epi32(kbits, _mm256_slli_epi32(pop[q], 1));
        std::int32_t* row = dot + std::int64_t(p + q) * dot_ld + o0 + ob;
        if (valid == kBlock) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(row), d);
        } else {
          alignas(32) std::int32_t tmp[kBlock];
          _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), d);
          for (int j = 0; j < valid; ++j) row[j] = tmp[j];
        }
      }
    }
  }
  correct_tile(g, group, dot, dot_ld, tile, s.n_oob, s.oob, wsum);
}

// ------------------------------------------------------------------ depthwise core

// 32 sign bytes from 32 bits: byte j of the broadcast spread over 8 lanes, tested against its bit.
void expand_avx2(const word_t* px, std::int64_t npix, int in_words, int cpad, std::int8_t* out) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
  const __m256i one = _mm256_set1_epi8(1);
  const int chunks = cpad / 32;
  for (std::int64_t p = 0; p < npix; ++p) {
    const std::uint32_t* w = reinterpret_cast<const std::uint32_t*>(px + p * in_words);
    std::int8_t* o = out + p * cpad;
    for (int c = 0; c < chunks; ++c) {
      const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(w[c])), spread);
      const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * c), _mm256_or_si256(set, one));
    }
  }
}

// Sign bytes x (+1/-1 inside, the padding value outside) times sign-byte weights, summed over the
// taps in int8 lanes (|sum| <= taps <= 127), 32 channels per vector. KH = KW = 0: sizes from g.
template <int KH, int KW>
void depthwise_impl(const std::int8_t* img, int img_w, int cpad, int row0, int col0, const std::int8_t* wts,
                    const Geom& g, int oy_begin, int oy_end, std::int32_t* dot, std::int64_t dot_ld) {
  const int kh = KH ? KH : g.kh, kw = KW ? KW : g.kw;
  const int chunks = cpad / 32;
  const std::int64_t row_step = std::int64_t(g.dh) * img_w * cpad, col_step = std::int64_t(g.dw) * cpad;
  for (int oy = oy_begin; oy < oy_end; ++oy)
    for (int ox = 0; ox < g.ow; ++ox) {
      std::int32_t* d = dot + (std::int64_t(oy - oy_begin) * g.ow + ox) * dot_ld;
      const std::int8_t* x0 = img + (std::int64_t(oy * g.sh - g.pt - row0) * img_w + (ox * g.sw - g.pl - col0)) * cpad;
      for (int c = 0; c < chunks; ++c) {
        __m256i acc = _mm256_setzero_si256();
        for (int ky = 0; ky < kh; ++ky) {
          const std::int8_t* xrow = x0 + ky * row_step + 32 * c;
          const std::int8_t* wrow = wts + std::int64_t(ky * kw) * cpad + 32 * c;
          for (int kx = 0; kx < kw; ++kx) {
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xrow + kx * col_step));
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow + std::int64_t(kx) * cpad));
            acc = _mm256_add_epi8(acc, _mm256_sign_epi8(x, wv));
          }
        }
        std::int32_t* dc = d + 32 * c;
        const __m128i lo = _mm256_castsi256_si128(acc), hi = _mm256_extracti128_si256(acc, 1);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dc), _mm256_cvtepi8_epi32(lo));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dc + 8), _mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dc + 16), _mm256_cvtepi8_epi32(hi));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dc + 24), _mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
      }
    }
}

const Kernels kAvx2 = {
    "avx2", pack_avx2, epilogue_avx2, dense_avx2, dense_scratch_avx2, prepare_dense_avx2,
    expand_avx2, depthwise_entry<depthwise_impl<3, 3>, depthwise_impl<5, 5>, depthwise_impl<0, 0>>,
};

}  // namespace

const Kernels* kernels_avx2() { return &kAvx2; }

}  // namespace bitnas

#else  // not x86-64: no AVX2 kernels

namespace bitnas {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace bitnas

#endif

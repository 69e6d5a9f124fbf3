// Helpers shared by the kernel translation units. Everything here has internal linkage (anonymous
// namespace, no standard-library templates), so the AVX2 and AVX-512 units, compiled with their
// own -m flags, never lend an instruction-set-specific copy of a shared function to the portable code.
#pragma once

#include <cstdint>
#include <cstring>

#include "engine.h"

namespace bitnas {
namespace {

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

// Word j of group `group`'s channels of one packed pixel (bits shifted down to bit 0, tail zero).
inline word_t group_word(const word_t* px, int in_words, int group, int cin_g, int j) {
  const std::int64_t first = std::int64_t(group) * cin_g + 64 * std::int64_t(j);
  const int wi = int(first >> 6), sh = int(first & 63);
  word_t v = px[wi] >> sh;
  if (sh && wi + 1 < in_words) v |= px[wi + 1] << (64 - sh);
  const int left = cin_g - 64 * j;
  if (left < 64) v &= (word_t(1) << left) - 1;
  return v;
}

// Walks output pixels in order (flat over n, oy, ox) without a division per pixel.
struct PixelWalk {
  int n, oy, ox;
  PixelWalk(const Geom& g, std::int64_t pix) {
    const std::int64_t per_img = std::int64_t(g.oh) * g.ow;
    n = int(pix / per_img);
    const int r = int(pix - n * per_img);
    oy = r / g.ow;
    ox = r - oy * g.ow;
  }
  void next(const Geom& g) {
    if (++ox == g.ow) {
      ox = 0;
      if (++oy == g.oh) {
        oy = 0;
        ++n;
      }
    }
  }
};

// Whether every tap of output pixel `at` lies inside the image.
inline bool taps_inside(const Geom& g, const PixelWalk& at) {
  const int iy0 = at.oy * g.sh - g.pt, ix0 = at.ox * g.sw - g.pl;
  return iy0 >= 0 && iy0 + (g.kh - 1) * g.dh < g.h && ix0 >= 0 && ix0 + (g.kw - 1) * g.dw < g.w;
}

// Gather the taps of output pixel `at` for group `group`: calls put(k, word) for every one of the
// taps*g_words words in (tap, word) order (zero words outside the image, i.e. +1), and returns the
// number of taps outside the image, listing them in `oob`.
template <class Put>
inline int gather_pixel(const word_t* in, const Geom& g, int group, const PixelWalk& at, int* oob, Put put) {
  const int iy0 = at.oy * g.sh - g.pt, ix0 = at.ox * g.sw - g.pl;
  const int gw = g.g_words();
  const word_t* img = in + std::int64_t(at.n) * g.h * g.w * g.in_words;
  // Fast path: a 1x1 (or any) kernel whose taps are all inside, groups aligned to words.
  const bool aligned = g.groups == 1 || (g.cin_g() % 64 == 0);
  const int word0 = aligned && g.groups > 1 ? group * (g.cin_g() / 64) : 0;
  int n_oob = 0, k = 0;
  for (int ky = 0; ky < g.kh; ++ky) {
    const int iy = iy0 + ky * g.dh;
    const bool row_in = iy >= 0 && iy < g.h;
    for (int kx = 0; kx < g.kw; ++kx) {
      const int ix = ix0 + kx * g.dw;
      if (!row_in || ix < 0 || ix >= g.w) {
        oob[n_oob++] = ky * g.kw + kx;
        for (int j = 0; j < gw; ++j) put(k++, word_t(0));
        continue;
      }
      const word_t* px = img + (std::int64_t(iy) * g.w + ix) * g.in_words;
      if (aligned) {
        for (int j = 0; j < gw; ++j) put(k++, px[word0 + j]);
      } else {
        for (int j = 0; j < gw; ++j) put(k++, group_word(px, g.in_words, group, g.cin_g(), j));
      }
    }
  }
  return n_oob;
}

// Gather a tile of `tile` output pixels from flat index pix_begin: put(p, i, word) for word i of
// pixel p; each pixel's taps outside the image go to n_oob[p] and oob[p * taps ...].
template <class Put>
inline void gather_tile(const word_t* in, const Geom& g, int group, std::int64_t pix_begin, int tile, int* n_oob,
                        int* oob, Put put) {
  PixelWalk at(g, pix_begin);
  for (int p = 0; p < tile; ++p, at.next(g))
    n_oob[p] = gather_pixel(in, g, group, at, oob + p * g.taps(), [&](int i, word_t v) { put(p, i, v); });
}

// Zero-padding correction of one pixel's dot row for one group: with taps outside the image
// reading +1, each such tap added sum_c w = wsum[tap][o]; a ternary (zero) border adds nothing.
inline void correct_border(const Geom& g, int group, std::int32_t* dot, int n_oob, const int* oob,
                           const std::int32_t* wsum) {
  if (g.pad_one || n_oob == 0) return;
  const int og = g.cout_g(), o0 = group * og;
  std::int32_t* __restrict d = dot + o0;  // never overlaps wsum: lets each ISA unit vectorise this
  for (int i = 0; i < n_oob; ++i) {
    const std::int32_t* __restrict ws = wsum + std::int64_t(oob[i]) * g.cout + o0;
    for (int o = 0; o < og; ++o) d[o] -= ws[o];
  }
}

// The zero-padding correction of a whole tile (rows of stride dot_ld), after gather_tile.
inline void correct_tile(const Geom& g, int group, std::int32_t* dot, std::int64_t dot_ld, int tile, const int* n_oob,
                         const int* oob, const std::int32_t* wsum) {
  for (int p = 0; p < tile; ++p) correct_border(g, group, dot + p * dot_ld, n_oob[p], oob + p * g.taps(), wsum);
}

// A depthwise core of one ISA unit for one kernel size (`Kernels::depthwise` without img_h).
using DepthwiseCore = void (*)(const std::int8_t* img, int img_w, int cpad, int row0, int col0,
                               const std::int8_t* wts, const Geom& g, int oy_begin, int oy_end, std::int32_t* dot,
                               std::int64_t dot_ld);

// The `Kernels::depthwise` entry of every ISA unit: 3×3 and 5×5 run the cores compiled for that
// size (taps unrolled, weights held in registers), any other size the run-time one. A unit lists
// `depthwise_entry<depthwise_impl<3, 3>, depthwise_impl<5, 5>, depthwise_impl<0, 0>>` in its table.
template <DepthwiseCore K3, DepthwiseCore K5, DepthwiseCore KAny>
void depthwise_entry(const std::int8_t* img, int img_h, int img_w, int cpad, int row0, int col0,
                     const std::int8_t* wts, const Geom& g, int oy_begin, int oy_end, std::int32_t* dot,
                     std::int64_t dot_ld) {
  (void)img_h;
  if (g.kh == 3 && g.kw == 3)
    K3(img, img_w, cpad, row0, col0, wts, g, oy_begin, oy_end, dot, dot_ld);
  else if (g.kh == 5 && g.kw == 5)
    K5(img, img_w, cpad, row0, col0, wts, g, oy_begin, oy_end, dot, dot_ld);
  else
    KAny(img, img_w, cpad, row0, col0, wts, g, oy_begin, oy_end, dot, dot_ld);
}

}  // namespace
}  // namespace bitnas

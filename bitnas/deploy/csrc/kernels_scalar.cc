// Portable kernels (any CPU): 64-bit XOR + popcount, register-blocked 2 pixels x 4 output channels.
#include <cstdint>
#include <cstring>

#include "detail.h"
#include "engine.h"

namespace bitnas {
namespace {

inline int popcount64(word_t v) { return __builtin_popcountll(v); }

void pack_scalar(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale,
                 const float* shift, word_t* out) {
  const int nw = words_for(c);
  for (std::int64_t p = 0; p < npix; ++p) {
    const float* xp = x + p * ld;
    word_t* o = out + p * nw;
    for (int w = 0; w < nw; ++w) {
      const int c0 = 64 * w, c1 = imin(c, c0 + 64);
      word_t bits = 0;
      for (int ch = c0; ch < c1; ++ch) {
        float v = xp[ch];
        if (scale) v = v * scale[ch];
        if (shift) v = v + shift[ch];
        bits |= word_t(v < 0.0f) << (ch - c0);
      }
      o[w] = bits;
    }
  }
}

// Scratch layout for a tile of T pixels: gathered words [T][K], then int tables.
struct DenseScratch {
  word_t* act;
  int* n_oob;
  int* oob;
  std::int32_t* pop;
};

DenseScratch carve(void* scratch, const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  DenseScratch s;
  s.act = static_cast<word_t*>(scratch);
  s.n_oob = reinterpret_cast<int*>(s.act + tile * k);
  s.oob = s.n_oob + tile;
  s.pop = reinterpret_cast<std::int32_t*>(s.oob + std::int64_t(tile) * g.taps());
  return s;
}

std::int64_t dense_scratch_scalar(const Geom& g, int tile) {
  const std::int64_t k = std::int64_t(g.taps()) * g.g_words();
  return tile * k * 8 + std::int64_t(tile) * (1 + g.taps()) * 4 + std::int64_t(tile) * g.cout_g() * 4 + 64;
}

std::int64_t prepare_dense_scalar(const word_t* canon, const Geom& g, word_t* out) {
  const std::int64_t n = std::int64_t(g.cout_g()) * g.taps() * g.g_words();
  if (out) std::memcpy(out, canon, sizeof(word_t) * n);
  return n;
}

void dense_scalar(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
                  std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld,
                  void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = g.taps() * g.g_words(), og = g.cout_g(), taps = g.taps();
  DenseScratch s = carve(scratch, g, tile);
  gather_tile(in, g, group, pix_begin, tile, s.n_oob, s.oob,
              [&](int p, int i, word_t v) { s.act[std::int64_t(p) * k + i] = v; });
  const word_t* w = static_cast<const word_t*>(wts);
  for (int p = 0; p < tile; p += 2) {
    const word_t* a0 = s.act + std::int64_t(p) * k;
    const word_t* a1 = p + 1 < tile ? a0 + k : a0;
    std::int32_t* pop0 = s.pop;
    std::int32_t* pop1 = s.pop + og;
    int o = 0;
    for (; o + 4 <= og; o += 4) {
      const word_t* w0 = w + std::int64_t(o) * k;
      const word_t *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
      std::int32_t c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
      for (int i = 0; i < k; ++i) {
        const word_t x0 = a0[i], x1 = a1[i];
        c00 += popcount64(x0 ^ w0[i]); c01 += popcount64(x0 ^ w1[i]);
        c02 += popcount64(x0 ^ w2[i]); c03 += popcount64(x0 ^ w3[i]);
        c10 += popcount64(x1 ^ w0[i]); c11 += popcount64(x1 ^ w1[i]);
        c12 += popcount64(x1 ^ w2[i]); c13 += popcount64(x1 ^ w3[i]);
      }
      pop0[o] = c00; pop0[o + 1] = c01; pop0[o + 2] = c02; pop0[o + 3] = c03;
      pop1[o] = c10; pop1[o + 1] = c11; pop1[o + 2] = c12; pop1[o + 3] = c13;
    }
    for (; o < og; ++o) {
      const word_t* w0 = w + std::int64_t(o) * k;
      std::int32_t c0 = 0, c1 = 0;
      for (int i = 0; i < k; ++i) {
        c0 += popcount64(a0[i] ^ w0[i]);
        c1 += popcount64(a1[i] ^ w0[i]);
      }
      pop0[o] = c0;
      pop1[o] = c1;
    }
    const std::int32_t kbits = taps * g.cin_g();
    const int o0 = group * og;
    for (int q = 0; q < 2 && p + q < tile; ++q) {
      std::int32_t* d = dot + std::int64_t(p + q) * dot_ld;
      const std::int32_t* pop = q ? pop1 : pop0;
      for (int i = 0; i < og; ++i) d[o0 + i] = kbits - 2 * pop[i];
      correct_border(g, group, d, s.n_oob[p + q], s.oob + (p + q) * taps, wsum);
    }
  }
}

// Depthwise: img is a sign-byte image (+1/-1 inside, the padding value outside, 0 in channel
// padding) with cpad bytes per pixel, covering input rows row0.. and columns col0..; wts is
// [taps][cpad] of +1/-1 (0 in channel padding).
void depthwise_scalar(const std::int8_t* img, int img_h, int img_w, int cpad, int row0, int col0,
                      const std::int8_t* wts, const Geom& g, int oy_begin, int oy_end, std::int32_t* dot,
                      std::int64_t dot_ld) {
  (void)img_h;
  const int c = g.cout;
  std::int32_t acc[256];
  for (int oy = oy_begin; oy < oy_end; ++oy)
    for (int ox = 0; ox < g.ow; ++ox) {
      std::int32_t* d = dot + (std::int64_t(oy - oy_begin) * g.ow + ox) * dot_ld;
      for (int c0 = 0; c0 < c; c0 += 256) {
        const int c1 = imin(c, c0 + 256);
        for (int ch = c0; ch < c1; ++ch) acc[ch - c0] = 0;
        for (int ky = 0; ky < g.kh; ++ky) {
          const int iy = oy * g.sh - g.pt + ky * g.dh - row0;
          for (int kx = 0; kx < g.kw; ++kx) {
            const int ix = ox * g.sw - g.pl + kx * g.dw - col0;
            const std::int8_t* x = img + (std::int64_t(iy) * img_w + ix) * cpad;
            const std::int8_t* w = wts + std::int64_t(ky * g.kw + kx) * cpad;
            for (int ch = c0; ch < c1; ++ch) acc[ch - c0] += x[ch] * w[ch];
          }
        }
        for (int ch = c0; ch < c1; ++ch) d[ch] = acc[ch - c0];
      }
    }
}

void expand_scalar(const word_t* px, std::int64_t npix, int in_words, int cpad, std::int8_t* out) {
  for (std::int64_t p = 0; p < npix; ++p) {
    const word_t* w = px + p * in_words;
    std::int8_t* o = out + p * cpad;
    for (int c = 0; c < cpad; ++c) o[c] = (w[c >> 6] >> (c & 63)) & 1 ? -1 : 1;
  }
}

const Kernels kScalar = {
    "scalar",      pack_scalar,          reference_epilogue, dense_scalar, dense_scratch_scalar,
    prepare_dense_scalar, expand_scalar, depthwise_scalar,
};

}  // namespace

const Kernels* kernels_scalar() { return &kScalar; }

}  // namespace bitnas

// Plain reference kernels: one bit at a time, no blocking, no tricks, no shared helpers. The
// optimised kernels must produce exactly what these produce. Depthwise convs run through the
// dense reference core (no depthwise entry).
#include <cstring>

#include "engine.h"

namespace bitnas {

namespace {
inline bool bit_of(const word_t* words, int c) { return (words[c >> 6] >> (c & 63)) & 1; }
}  // namespace

void reference_pack(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale,
                    const float* shift, word_t* out) {
  const int nw = words_for(c);
  for (std::int64_t p = 0; p < npix; ++p) {
    word_t* o = out + p * nw;
    std::memset(o, 0, sizeof(word_t) * nw);
    for (int ch = 0; ch < c; ++ch) {
      float v = x[p * ld + ch];
      if (scale) v = v * scale[ch];
      if (shift) v = v + shift[ch];
      if (v < 0.0f) o[ch >> 6] |= word_t(1) << (ch & 63);
    }
  }
}

namespace {

// The dense core one bit at a time, on the canonical weights of group `group` ([cout_g][taps][g_words]):
// taps outside the image read the padding value (0: a ternary border, or +1), no correction step.
void dense_reference(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
                     std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld,
                     void* scratch) {
  (void)wsum;
  (void)scratch;
  const word_t* canon = static_cast<const word_t*>(wts);
  const int cin_g = g.cin_g(), og = g.cout_g(), gw = g.g_words();
  const std::int64_t per_img = std::int64_t(g.oh) * g.ow;
  for (std::int64_t pix = pix_begin; pix < pix_end; ++pix) {
    const int n = int(pix / per_img), oy = int(pix % per_img / g.ow), ox = int(pix % g.ow);
    std::int32_t* d = dot + (pix - pix_begin) * dot_ld + std::int64_t(group) * og;
    for (int o = 0; o < og; ++o) {
      std::int32_t acc = 0;
      for (int ky = 0; ky < g.kh; ++ky)
        for (int kx = 0; kx < g.kw; ++kx) {
          const int iy = oy * g.sh - g.pt + ky * g.dh, ix = ox * g.sw - g.pl + kx * g.dw;
          const bool inside = iy >= 0 && iy < g.h && ix >= 0 && ix < g.w;
          const word_t* wt = canon + (std::int64_t(o) * g.taps() + ky * g.kw + kx) * gw;
          const word_t* px = inside ? in + ((std::int64_t(n) * g.h + iy) * g.w + ix) * g.in_words : nullptr;
          for (int c = 0; c < cin_g; ++c) {
            const int w = bit_of(wt, c) ? -1 : 1;
            int x;
            if (inside) x = bit_of(px, group * cin_g + c) ? -1 : 1;
            else x = g.pad_one ? 1 : 0;
            acc += x * w;
          }
        }
      d[o] = acc;
    }
  }
}

std::int64_t dense_scratch_reference(const Geom& g, int tile) {
  (void)g;
  (void)tile;
  return 0;
}

std::int64_t prepare_dense_reference(const word_t* canon, const Geom& g, word_t* out) {
  const std::int64_t n = std::int64_t(g.cout_g()) * g.taps() * g.g_words();
  if (out) std::memcpy(out, canon, sizeof(word_t) * n);
  return n;
}

}  // namespace

void reference_epilogue(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                        const EpiParams& p, const EpiIO& io) {
  const int nw = words_for(cout);
  for (int i = 0; i < npix; ++i) {
    const std::int64_t pix = pix0 + i;
    const std::int32_t* d = dot + i * dot_ld;
    word_t* bits = io.bits ? io.bits + pix * nw : nullptr;
    if (bits) std::memset(bits, 0, sizeof(word_t) * nw);
    for (int o = 0; o < cout; ++o) {
      if (io.ints) io.ints[pix * io.ints_ld + o] = d[o];
      if (io.threshold) {
        if (bits && d[o] * p.thr_sign[o] < p.thr[o]) bits[o >> 6] |= word_t(1) << (o & 63);
        continue;
      }
      if (!io.out && !bits) continue;
      float v = float(d[o]) * p.mul[o];
      v = v + p.add[o];
      if (io.res) v = v + io.res[pix * io.res_ld + o];
      if (p.act == kActRelu) {
        v = v > 0.0f ? v : 0.0f;
      } else if (p.act == kActPrelu) {
        v = v > 0.0f ? v : p.slope[o] * v;
      } else if (p.act == kActRprelu) {
        float u = v - p.shift_in[o];
        u = u > 0.0f ? u : p.slope[o] * u;
        v = u + p.shift_out[o];
      }
      if (io.post) v = v + io.post[pix * io.post_ld + o];
      if (io.out) io.out[pix * io.out_ld + o] = v;
      if (bits) {
        float b = v;
        if (p.bits_scale) b = b * p.bits_scale[o];
        if (p.bits_shift) b = b + p.bits_shift[o];
        if (b < 0.0f) bits[o >> 6] |= word_t(1) << (o & 63);
      }
    }
  }
}

namespace {
const Kernels kReference = {
    "reference", reference_pack, reference_epilogue, dense_reference, dense_scratch_reference,
    prepare_dense_reference, nullptr, nullptr,
};
}  // namespace

const Kernels* kernels_reference() { return &kReference; }

}  // namespace bitnas

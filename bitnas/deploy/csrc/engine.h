// bitnas 1-bit inference engine: shared types.
//
// Conventions (every unit below follows them):
// - Activations are NHWC. A packed activation holds, per pixel, `words` 64-bit words; bit (c & 63)
//   of word (c >> 6) is 1 when channel c is negative (sign(0) = +1, so 0 is bit 0). Tail bits of
//   the last word are 0. An all-zero word therefore means "+1 everywhere", which is what
//   `pad_value = 1` padding reads.
// - A binary convolution's integer result ("dot") is the exact ±1 dot product
//   sum over taps and channels of x * w, with x in {-1, +1} inside the image and x = 0 (zero
//   padding, a ternary border) or x = +1 (`pad_value = 1`) outside.
// - The output transform (epilogue) maps dot to floats, optionally adds a residual, applies an
//   activation, adds a second addend, and writes floats, packed bits of the result for the next
//   binary layer, or the raw integers.
// Units: bitpack (activations -> words), the binary conv core (dot products), the epilogue. Each
// ISA's implementations form one Kernels table (kernels_<isa>.cc), listed in the ISA table
// (isa.h); the plain reference table (kernels_reference.cc) sits beside the optimised ones and
// the tests hold them equal.
#pragma once

#include <cstdint>

namespace bitnas {

using word_t = std::uint64_t;

inline int words_for(int channels) { return (channels + 63) / 64; }

// Geometry of one binary convolution call.
struct Geom {
  int n = 0, h = 0, w = 0;      // input batch and spatial size
  int in_words = 0;             // words per input pixel of the packed tensor
  int cin = 0;                  // input channels (all groups)
  int cout = 0;                 // output channels (all groups)
  int groups = 1;
  int kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int pt = 0, pl = 0;           // padding above / left of the image (negative: origin offset)
  int oh = 0, ow = 0;           // output size (given, so the caller decides bottom/right)
  bool pad_one = false;         // taps outside the image read +1 (else 0)

  int cin_g() const { return cin / groups; }
  int cout_g() const { return cout / groups; }
  int taps() const { return kh * kw; }
  int g_words() const { return words_for(cin_g()); }
  std::int64_t out_pixels() const { return std::int64_t(n) * oh * ow; }
};

enum Act : int { kActNone = 0, kActRelu = 1, kActPrelu = 2, kActRprelu = 3 };

// Per-layer constants of the output transform (all arrays have `cout` entries).
//   v = float(dot) * mul + add ; v += res ; v = act(v) ; v += post
//   bit (negative) = (v * bits_scale + bits_shift < 0)   [scale/shift optional]
// Threshold mode (bits only, no residual/activation/float output): the bit is
//   (dot * thr_sign < thr), precomputed exactly in double precision by the caller.
struct EpiParams {
  const float* mul = nullptr;
  const float* add = nullptr;
  int act = kActNone;
  const float* slope = nullptr;      // PReLU / RPReLU slope
  const float* shift_in = nullptr;   // RPReLU
  const float* shift_out = nullptr;  // RPReLU
  const float* bits_scale = nullptr;
  const float* bits_shift = nullptr;
  const std::int32_t* thr_sign = nullptr;
  const std::int32_t* thr = nullptr;
};

// Per-call outputs and addends of the output transform; pixel strides in elements.
struct EpiIO {
  const float* res = nullptr;  std::int64_t res_ld = 0;
  const float* post = nullptr; std::int64_t post_ld = 0;
  float* out = nullptr;        std::int64_t out_ld = 0;
  word_t* bits = nullptr;      // words_for(cout) words per pixel
  std::int32_t* ints = nullptr; std::int64_t ints_ld = 0;
  bool threshold = false;
};

// The packed input of a `dense_fused` call with its border laid out: an (n, h, w, in_words) image
// whose pixel (0, 0) is input pixel (-pt, -pl), zero words (+1) outside the input, so that every
// tap of every output pixel lies inside it (the input itself when the conv has no padding).
// With zero padding (a ternary border) the +1 words outside add each such tap's weight sums,
// which output position (oy, ox) takes back out in one step: when fix[oy * ow + ox] = r >= 0, its
// dot products lose fix_rows[r * cout + o], the sums of wsum[tap][o] over its taps outside the
// input (fix is null when no position has any: pad_one, or no padding).
struct Framed {
  const word_t* img = nullptr;
  int h = 0, w = 0;
  const std::int32_t* fix = nullptr;       // [oh * ow]
  const std::int32_t* fix_rows = nullptr;  // [rows][cout]
};

// One ISA's implementations. Weight layouts are private to each ISA (prepared by `prepare`).
struct DenseWeights;  // defined per ISA
struct Kernels {
  const char* name;
  // Pack `npix` pixels of `c` float channels (pixel stride ld) into words (sign of x*scale+shift).
  void (*pack)(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale,
               const float* shift, word_t* out);
  // Output transform of `npix` consecutive output pixels starting at flat index `pix0`;
  // dot is [npix][cout] with row stride `dot_ld`.
  void (*epilogue)(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                   const EpiParams& p, const EpiIO& io);
  // Dense (popcount over channels) convolution core for output pixels [pix_begin, pix_end) of one
  // group: writes dot[p - pix_begin][o] for o in the group's output channels (row stride dot_ld).
  // `wts` is this ISA's layout of the group's weights (see prepare_dense); scratch as given.
  void (*dense)(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
                std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld,
                void* scratch);
  // Bytes of scratch `dense` needs for a tile of `tile` pixels.
  std::int64_t (*dense_scratch)(const Geom& g, int tile);
  // Lay out one group's canonical weights ([cout_g][taps][g_words] words) for `dense`;
  // returns the number of 64-bit words written (call with out = nullptr to size it).
  std::int64_t (*prepare_dense)(const word_t* canon, const Geom& g, word_t* out);
  // Depthwise path (nullptr: the row runs depthwise convs through `dense`).
  // Sign bytes of `npix` packed pixels (in_words words each): cpad bytes per pixel, -1 where the
  // bit is set, +1 elsewhere (channel padding included: the depthwise weights there are 0).
  void (*expand)(const word_t* px, std::int64_t npix, int in_words, int cpad, std::int8_t* out);
  // Depthwise core on a sign-byte image (see BinaryConv::run_depthwise): output pixels of row band
  // [oy_begin, oy_end) of image n; dot rows of cout entries.
  void (*depthwise)(const std::int8_t* img, int img_h, int img_w, int cpad, int row0, int col0,
                    const std::int8_t* wts, const Geom& g, int oy_begin, int oy_end, std::int32_t* dot,
                    std::int64_t dot_ld);
  // Dense conv and output transform in one pass, for groups == 1 and pt, pl >= 0 (nullptr:
  // `dense`, then `epilogue`): output pixels [pix_begin, pix_end) read their taps in place from the
  // framed input and go through the output transform a register block at a time, so neither a
  // gathered copy of the activations nor the tile's integers leave L1; zero padding is taken out
  // with the framed input's fix rows. `wts`/`scratch` as for `dense` (scratch sized by
  // `dense_scratch`).
  void (*dense_fused)(const Framed& src, const Geom& g, const void* wts, std::int64_t pix_begin, std::int64_t pix_end, const EpiParams& p, const EpiIO& io,
                      void* scratch) = nullptr;
};

// One table per ISA file; nullptr when the file is not compiled for this architecture.
const Kernels* kernels_reference();
const Kernels* kernels_scalar();
const Kernels* kernels_avx2();
const Kernels* kernels_avx512();
const Kernels* kernels_amx();  // dense on AMX tiles, the rest the avx512 table's

// The plain reference output transform (the scalar table uses it too).
void reference_epilogue(const std::int32_t* dot, std::int64_t dot_ld, int npix, std::int64_t pix0, int cout,
                        const EpiParams& p, const EpiIO& io);

}  // namespace bitnas

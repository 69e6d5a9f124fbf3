// The avx512 row's dense binary conv cores (compiled with the AVX-512 flags; see kernels_avx512.cc).
//
// VPOPCNTQ counts the bits of eight 64-bit words in one instruction. Weights are laid out in
// vectors of 8 output channels (one 64-bit word per lane, k words per vector); an activation word
// is broadcast (embedded {1to8} in the XOR), so one output pixel x 8 output channels x 64 input
// bits costs vpxorq + vpopcntq + vpaddq. Register block: 6 pixels x up to 4 vectors (32 output
// channels) = 24 accumulators + 4 weight registers of the 32 zmm.
//
// Activations are read where they lie: a block of 6 pixels whose taps are all inside the image
// reads word i of pixel p at px[p] + off[i] (off: the taps' offsets in the packed image), so
// only blocks touching the border are gathered into scratch (and corrected for zero padding, a
// tap at a time). `dense_fused` (groups == 1) reads every block from the framed input, turns its
// counts into dot products less each border pixel's one fix row (the framed input's zero-padding
// correction, summed over its taps outside once per input shape), and runs the output transform
// on them from L1, writing floats, the next layer's bits or integers straight to the outputs;
// `dense` (any groups) stores the dot products for the row's epilogue.
//
// This unit uses no standard-library templates (see detail.h).
#include "engine.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "avx512.h"
#include "detail.h"

namespace bitnas {
namespace {

constexpr int kLanes = 8;    // output channels per weight vector
constexpr int kVecs = 4;     // weight vectors per register block
constexpr int kPixels = 6;   // output pixels per register block

// One register block's pixels: word i of pixel p is px[p][off[i]] (rows past `rows` repeat pixel
// 0, computed and dropped); `border`: some pixel has taps outside a zero-padded image, listed in
// the tile's n_oob / oob from pixel `first` on (`dense`), or, on a framed input (`dense_fused`),
// fix[p] is pixel p's row of the framed input's zero-padding correction (null: none).
struct Block {
  const word_t* px[kPixels];
  const std::int32_t* fix[kPixels];
  const std::int64_t* off;
  int first, rows;
  bool border;

  // Block b of a tile of `tile` pixels, no border correction yet.
  void start(int b, int tile) {
    first = b * kPixels;
    rows = imin(kPixels, tile - first);
    border = false;
  }
};

struct Scratch {
  word_t* act;            // [tile rounded up to kPixels][k] gathered words
  std::int64_t* img_off;  // [k] offsets of a pixel's words in the packed image
  std::int64_t* iota;     // [k] 0, 1, ..., k - 1: offsets in a gathered row
  Block* blocks;          // [tile / kPixels + 1]
  std::int32_t* stage;    // [kPixels][stage_columns] one block's dot products (dense_fused)
  int* n_oob;             // [tile]
  int* oob;               // [tile][taps]
};

std::int64_t words_k(const Geom& g) { return std::int64_t(g.taps()) * g.g_words(); }
int max_blocks(int tile) { return tile / kPixels + 1; }
std::int64_t stage_columns(int cout) { return (cout + 15) / 16 * 16; }

Scratch carve(void* scratch, const Geom& g, int tile) {
  const std::int64_t k = words_k(g);
  Scratch s;
  s.act = static_cast<word_t*>(scratch);
  s.img_off = reinterpret_cast<std::int64_t*>(s.act + k * (tile + kPixels));
  s.iota = s.img_off + k;
  s.blocks = reinterpret_cast<Block*>(s.iota + k);
  s.stage = reinterpret_cast<std::int32_t*>(s.blocks + max_blocks(tile));
  s.n_oob = s.stage + kPixels * stage_columns(g.cout);
  s.oob = s.n_oob + tile;
  return s;
}

// Activation words of block `bl` against B weight vectors over k >= 1 words: 64-bit popcounts of
// (activation ^ weight) per pixel and vector. The first word sets the sums (no add to zero: an
// eighth of the work when k = 2, a 1x1 conv over 128 channels).
template <int B>
inline void counts(const Block& bl, int k, const word_t* wts, std::int64_t wstride, __m512i (&acc)[kPixels][B]) {
  const word_t* q[kPixels];
  for (int p = 0; p < kPixels; ++p) q[p] = bl.px[p];
  {
    const std::int64_t o = bl.off[0];
    __m512i w[B];
    for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_si512(wts + b * wstride);
    for (int p = 0; p < kPixels; ++p) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(q[p][o]));
      for (int b = 0; b < B; ++b) acc[p][b] = _mm512_popcnt_epi64(_mm512_xor_si512(a, w[b]));
    }
  }
  for (int i = 1; i < k; ++i) {
    const std::int64_t o = bl.off[i];
    __m512i w[B];
    for (int b = 0; b < B; ++b) w[b] = _mm512_loadu_si512(wts + b * wstride + std::int64_t(i) * kLanes);
    for (int p = 0; p < kPixels; ++p) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(q[p][o]));
      for (int b = 0; b < B; ++b) acc[p][b] = _mm512_add_epi64(acc[p][b], _mm512_popcnt_epi64(_mm512_xor_si512(a, w[b])));
    }
  }
}

// Dot products kbits - 2 * count of channels 16h .. 16h + 15 of a block's B vectors: two
// vectors' 64-bit counts (each < 2^32) become 16 int32 in channel order with one vpermt2d (an odd
// last vector fills the low 8 lanes; the others are to be masked off).
template <int B>
inline __m512i dots16(const __m512i (&acc)[B], int h, __m512i kb) {
  __m512i pop;
  if (2 * h + 1 < B) {
    const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    pop = _mm512_permutex2var_epi32(acc[2 * h], low_halves, acc[2 * h + 1]);
  } else {
    pop = _mm512_zextsi256_si512(_mm512_cvtepi64_epi32(acc[2 * h]));
  }
  return _mm512_sub_epi32(kb, _mm512_add_epi32(pop, pop));
}

// The dot products of `bl` x B vectors (the block's first `valid` channels, from channel o0) into
// rows row0, row0 + 1, ... of dot; kFix: less the block's fix rows (dense_fused).
template <int B, bool kFix>
inline void store_block(const Block& bl, int row0, int o0, int k, const word_t* wts, std::int64_t wstride, int valid,
                        std::int32_t kbits, std::int32_t* dot, std::int64_t dot_ld) {
  __m512i acc[kPixels][B];
  counts<B>(bl, k, wts, wstride, acc);
  const __m512i kb = _mm512_set1_epi32(kbits);
  for (int p = 0; p < kPixels; ++p) {
    if (p >= bl.rows) break;
    for (int h = 0; h < (B + 1) / 2; ++h) {
      const __mmask16 m = lanes16(valid - 16 * h);
      __m512i d = dots16<B>(acc[p], h, kb);
      if (kFix && bl.fix[p]) d = _mm512_sub_epi32(d, _mm512_maskz_loadu_epi32(m, bl.fix[p] + o0 + 16 * h));
      _mm512_mask_storeu_epi32(dot + (row0 + p) * dot_ld + 16 * h, m, d);
    }
  }
}

// store_block for the group's vectors v0 .. v0 + nb - 1 (nb <= kVecs).
template <bool kFix>
inline void store_vectors(int nb, const Block& bl, int row0, int o0, int k, const word_t* wts, std::int64_t wstride,
                          int valid, std::int32_t kbits, std::int32_t* dot, std::int64_t dot_ld) {
  switch (nb) {
    case 4: store_block<4, kFix>(bl, row0, o0, k, wts, wstride, valid, kbits, dot, dot_ld); break;
    case 3: store_block<3, kFix>(bl, row0, o0, k, wts, wstride, valid, kbits, dot, dot_ld); break;
    case 2: store_block<2, kFix>(bl, row0, o0, k, wts, wstride, valid, kbits, dot, dot_ld); break;
    default: store_block<1, kFix>(bl, row0, o0, k, wts, wstride, valid, kbits, dot, dot_ld); break;
  }
}

// The blocks of a tile of output pixels from pix_begin, for group `group`: blocks whose taps are
// all inside read the packed image in place; the others are gathered into s.act.
int plan_blocks(const word_t* in, const Geom& g, int group, std::int64_t pix_begin, int tile, const Scratch& s) {
  const int gw = g.g_words(), k = int(words_k(g)), taps = g.taps();
  const bool aligned = g.groups == 1 || g.cin_g() % 64 == 0;
  const int word0 = g.groups > 1 ? group * (g.cin_g() / 64) : 0;
  for (int ky = 0, i = 0; ky < g.kh; ++ky)
    for (int kx = 0; kx < g.kw; ++kx)
      for (int j = 0; j < gw; ++j, ++i) {
        s.img_off[i] = (std::int64_t(ky) * g.dh * g.w + std::int64_t(kx) * g.dw) * g.in_words + word0 + j;
        s.iota[i] = i;
      }
  const std::int64_t img_words = std::int64_t(g.h) * g.w * g.in_words;
  const int nblocks = (tile + kPixels - 1) / kPixels;
  PixelWalk at(g, pix_begin);
  for (int b = 0; b < nblocks; ++b) {
    Block& bl = s.blocks[b];
    bl.start(b, tile);
    bool inside = aligned;
    PixelWalk w = at;
    for (int p = 0; p < bl.rows && inside; ++p, w.next(g)) {
      inside = taps_inside(g, w);
      const int iy0 = w.oy * g.sh - g.pt, ix0 = w.ox * g.sw - g.pl;
      if (inside) bl.px[p] = in + w.n * img_words + (std::int64_t(iy0) * g.w + ix0) * g.in_words;
    }
    if (inside) {
      bl.off = s.img_off;
    } else {
      bl.off = s.iota;
      w = at;
      for (int p = 0; p < bl.rows; ++p, w.next(g)) {
        const int q = bl.first + p;
        word_t* dst = s.act + std::int64_t(q) * k;
        s.n_oob[q] = gather_pixel(in, g, group, w, s.oob + q * taps, [&](int i, word_t v) { dst[i] = v; });
        bl.border |= s.n_oob[q] > 0 && !g.pad_one;
        bl.px[p] = dst;
      }
    }
    for (int p = bl.rows; p < kPixels; ++p) bl.px[p] = bl.px[0];
    for (int p = 0; p < bl.rows; ++p) at.next(g);
  }
  return nblocks;
}

// The blocks of a tile on the framed input: every pixel reads its taps in place, and takes its
// fix row (if any) from the framed input.
int plan_framed(const Framed& src, const Geom& g, std::int64_t pix_begin, int tile, const Scratch& s) {
  const int gw = g.g_words();
  for (int ky = 0, i = 0; ky < g.kh; ++ky)
    for (int kx = 0; kx < g.kw; ++kx)
      for (int j = 0; j < gw; ++j, ++i)
        s.img_off[i] = (std::int64_t(ky) * g.dh * src.w + std::int64_t(kx) * g.dw) * g.in_words + j;
  const int nblocks = (tile + kPixels - 1) / kPixels;
  PixelWalk at(g, pix_begin);
  for (int b = 0; b < nblocks; ++b) {
    Block& bl = s.blocks[b];
    bl.start(b, tile);
    bl.off = s.img_off;
    for (int p = 0; p < bl.rows; ++p, at.next(g)) {
      bl.px[p] = src.img + ((std::int64_t(at.n) * src.h + at.oy * g.sh) * src.w + std::int64_t(at.ox) * g.sw) * g.in_words;
      const int r = src.fix ? src.fix[at.oy * g.ow + at.ox] : -1;
      bl.fix[p] = r < 0 ? nullptr : src.fix_rows + std::int64_t(r) * g.cout;
    }
    for (int p = bl.rows; p < kPixels; ++p) bl.px[p] = bl.px[0];
  }
  return nblocks;
}

// The output rows of a dense_fused call are written a 6-pixel block at a time, in pixel order.
// Stores to lines in no cache stall once the store buffer fills, so the rows of the float output
// (and of the residual and addend read beside it) are prefetched into L2 about kAheadBytes of
// output ahead of the block being written, and their misses overlap the counting (the conv with
// float output of the batch-64 benchmark layers 1.04-1.20x faster on a Sapphire Rapids core;
// 16-128 KB ahead and PREFETCHW measured the same).
constexpr std::int64_t kAheadBytes = 32768;

struct Ahead {
  std::int64_t next, dist, end;  // next pixel to request, distance and limit in pixels

  // A tile from pix_begin: with one thread the previous tile requested this one's first `dist`
  // pixels already; with several it ran elsewhere, and those stay unrequested (as without this).
  Ahead(const Geom& g, const EpiIO& io, std::int64_t pix_begin) {
    const bool any = io.out || io.res || io.post;
    dist = any ? kAheadBytes / (4 * std::int64_t(g.cout)) + 1 : 0;
    end = any ? g.out_pixels() : 0;
    next = pix_begin == 0 ? 0 : pix_begin + dist;
  }

  // Request the rows of every pixel before `upto` + dist not yet requested.
  inline void run(std::int64_t upto, const EpiIO& io, int cout) {
    const std::int64_t last = upto + dist < end ? upto + dist : end;
    const std::int64_t bytes = 4 * std::int64_t(cout);
    for (; next < last; ++next) {
      for (std::int64_t b = 0; b < bytes; b += 64) {
        if (io.out) _mm_prefetch(reinterpret_cast<const char*>(io.out + next * io.out_ld) + b, _MM_HINT_T1);
        if (io.res) _mm_prefetch(reinterpret_cast<const char*>(io.res + next * io.res_ld) + b, _MM_HINT_T1);
        if (io.post) _mm_prefetch(reinterpret_cast<const char*>(io.post + next * io.post_ld) + b, _MM_HINT_T1);
      }
    }
  }
};

}  // namespace

namespace avx512 {

// Weights of one group: ceil(cout_g / 8) vectors, each [k][8] words (zero for missing channels).
std::int64_t prepare_dense(const word_t* canon, const Geom& g, word_t* out) {
  const int og = g.cout_g(), k = int(words_k(g));
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

std::int64_t dense_scratch(const Geom& g, int tile) {
  const std::int64_t k = words_k(g);
  return 8 * k * (tile + kPixels) + 16 * k + std::int64_t(sizeof(Block)) * max_blocks(tile) +
         4 * kPixels * stage_columns(g.cout) + std::int64_t(tile) * (1 + g.taps()) * 4 + 64;
}

void dense(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
           std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld, void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = int(words_k(g)), og = g.cout_g(), o0 = group * og;
  Scratch s = carve(scratch, g, tile);
  const int nblocks = plan_blocks(in, g, group, pix_begin, tile, s);
  const std::int32_t kbits = g.taps() * g.cin_g();
  const word_t* w = static_cast<const word_t*>(wts);
  const std::int64_t wstride = std::int64_t(k) * kLanes;
  const int nv = (og + kLanes - 1) / kLanes;
  for (int v0 = 0; v0 < nv; v0 += kVecs) {
    const int nb = imin(kVecs, nv - v0);
    const int valid = imin(nb * kLanes, og - v0 * kLanes);
    const word_t* wv = w + v0 * wstride;
    std::int32_t* d = dot + o0 + v0 * kLanes;
    for (int b = 0; b < nblocks; ++b) {
      const Block& bl = s.blocks[b];
      store_vectors<false>(nb, bl, bl.first, 0, k, wv, wstride, valid, kbits, d, dot_ld);
    }
  }
  for (int b = 0; b < nblocks; ++b) {
    const Block& bl = s.blocks[b];
    if (bl.border)
      correct_tile(g, group, dot + bl.first * dot_ld, dot_ld, bl.rows, s.n_oob + bl.first, s.oob + bl.first * g.taps(),
                   wsum);
  }
}

void dense_fused(const Framed& src, const Geom& g, const void* wts, std::int64_t pix_begin, std::int64_t pix_end,
                 const EpiParams& ep, const EpiIO& io, void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = int(words_k(g)), og = g.cout;
  Scratch s = carve(scratch, g, tile);
  const int nblocks = plan_framed(src, g, pix_begin, tile, s);
  const std::int32_t kbits = g.taps() * g.cin_g();
  const word_t* w = static_cast<const word_t*>(wts);
  const std::int64_t wstride = std::int64_t(k) * kLanes, stage_ld = stage_columns(og);
  const int nv = (og + kLanes - 1) / kLanes;
  Ahead ahead(g, io, pix_begin);
  for (int b = 0; b < nblocks; ++b) {
    const Block& bl = s.blocks[b];
    ahead.run(pix_begin + bl.first, io, og);
    for (int v0 = 0; v0 < nv; v0 += kVecs) {
      const int nb = imin(kVecs, nv - v0);
      const int valid = imin(nb * kLanes, og - v0 * kLanes);
      store_vectors<true>(nb, bl, 0, v0 * kLanes, k, w + v0 * wstride, wstride, valid, kbits, s.stage + v0 * kLanes,
                          stage_ld);
    }
    epilogue(s.stage, stage_ld, bl.rows, pix_begin + bl.first, og, ep, io);
  }
  ahead.run(pix_end, io, og);
}

}  // namespace avx512
}  // namespace bitnas

#endif

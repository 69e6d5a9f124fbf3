// AMX kernels (x86-64 with AMX-TILE and AMX-INT8, the OS saving the tile state and Linux granting it
// to this process; compiled with -mamx-tile -mamx-int8 and the AVX-512 flags, chosen at run time).
//
// Binary conv core on int8 tiles: +-1 x +-1 products are exact in int8 with int32 accumulation,
// so the dense conv is one int8 matrix product. Every gathered 64-bit activation word becomes 64
// sign bytes (+1 where the bit is 0, -1 where it is 1; a zero word, i.e. a tap outside the image,
// reads +1 and the shared zero-padding correction takes it back out, exactly as in the popcount
// rows); one word is one K step of TDPBSSD (a 16 x 64-byte A tile). Weights are unpacked once at
// load to +-1 bytes in the layout TDPBSSD wants for B: per 16 output channels and word, 16 rows
// of 16 x 4 bytes, 0 for channels past the group's input channels (the tail bits of a word) and
// for missing output channels, so those lanes add nothing. Register block: 2 x 2 int32 C tiles
// (32 pixels x 32 output channels), 2 A and 2 B tiles: four TDPBSSD per four tile loads; K runs
// in slices so a block's activations stay in L1 while the weights stream from L2.
//
// Only `dense` (and `dense_scratch`, `prepare_dense`) are AMX; packing, the output transform and
// the depthwise path are the AVX-512 row's kernels (every AMX CPU has AVX-512 F/BW/VL/VPOPCNTDQ).
// This unit uses no standard-library templates (see detail.h).
#include "engine.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__AMX_TILE__) && defined(__AMX_INT8__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "detail.h"

namespace bitnas {
namespace {

constexpr int kRows = 16;        // rows of every tile (pixels of A and C, K/4 rows of B)
constexpr int kBytes = 64;       // bytes per tile row: one 64-bit word's 64 channels as sign bytes
constexpr int kChans = 16;       // output channels per B / C tile
constexpr int kBlockPix = 32;    // pixels per register block (two A tiles)
constexpr int kSlice = 8;        // K words per slice: a 32-pixel block's A slice is 16 KB
constexpr std::int64_t kBTile = kRows * kBytes;  // bytes of one B tile

// The tile configuration: palette 1, every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

// Weights of one group: ceil(cout_g / 16) chunks x k words x one B tile (kBTile bytes), as words.
// Byte 4n + j of row r of the tile of (chunk c, word i) is output channel 16c + n's weight of the
// word's bit 4r + j: -1 where set, +1 where clear, 0 past the group's channels.
std::int64_t prepare_dense_amx(const word_t* canon, const Geom& g, word_t* out) {
  const int og = g.cout_g(), gw = g.g_words(), k = g.taps() * gw, cin_g = g.cin_g();
  const int chunks = (og + kChans - 1) / kChans;
  const std::int64_t n = std::int64_t(chunks) * k * kBTile / 8;
  if (!out) return n;
  std::int8_t* b = reinterpret_cast<std::int8_t*>(out);
  for (int c = 0; c < chunks; ++c)
    for (int i = 0; i < k; ++i) {
      std::int8_t* tile = b + (std::int64_t(c) * k + i) * kBTile;
      const int first = 64 * (i % gw);  // input channel of the word's bit 0
      for (int r = 0; r < kRows; ++r)
        for (int nn = 0; nn < kChans; ++nn)
          for (int j = 0; j < 4; ++j) {
            const int o = c * kChans + nn, bit = 4 * r + j;
            std::int8_t v = 0;
            if (o < og && first + bit < cin_g) v = (canon[std::int64_t(o) * k + i] >> bit) & 1 ? -1 : 1;
            tile[r * kBytes + 4 * nn + j] = v;
          }
    }
  return n;
}

struct Scratch {
  std::int8_t* act;    // [pixel blocks of 16][k][16 pixels][64] sign bytes (A tiles back to back), aligned
  std::int32_t* c;     // [kBlockPix][c_columns(cout_g)] counts of one block of pixels
  int* n_oob;
  int* oob;
};

// Columns of the count buffer: the group's output channels rounded up to a pair of C tiles.
int c_columns(int og) { return (og + 2 * kChans - 1) / (2 * kChans) * 2 * kChans; }

std::int64_t padded_pixels(int tile) { return (tile + kBlockPix - 1) / kBlockPix * kBlockPix; }

Scratch carve(void* scratch, const Geom& g, int tile) {
  const std::int64_t kb = std::int64_t(g.taps()) * g.g_words() * kBytes;
  Scratch s;
  const std::uintptr_t base = (reinterpret_cast<std::uintptr_t>(scratch) + 63) & ~std::uintptr_t(63);
  s.act = reinterpret_cast<std::int8_t*>(base);
  s.c = reinterpret_cast<std::int32_t*>(s.act + kb * padded_pixels(tile));
  s.n_oob = reinterpret_cast<int*>(s.c + kBlockPix * c_columns(g.cout_g()));
  s.oob = s.n_oob + tile;
  return s;
}

std::int64_t dense_scratch_amx(const Geom& g, int tile) {
  const std::int64_t kb = std::int64_t(g.taps()) * g.g_words() * kBytes;
  return 64 + kb * padded_pixels(tile) + 4 * kBlockPix * c_columns(g.cout_g()) + std::int64_t(tile) * (1 + g.taps()) * 4 +
         64;
}

// One register block: MB x 16 pixels (A tiles from `a`, pixel-block stride a_ld bytes) times
// NB x 16 output channels (B tiles from `b`, chunk stride b_ld bytes) over k words, accumulated
// into c (int32 rows of c_ld bytes; zero first when `first`).
template <int MB, int NB>
inline void block(const std::int8_t* a, std::int64_t a_ld, const std::int8_t* b, std::int64_t b_ld, int k,
                  std::int32_t* c, std::int64_t c_ld, bool first) {
  std::int32_t* c1 = c + kChans;
  std::int32_t* c2 = reinterpret_cast<std::int32_t*>(reinterpret_cast<char*>(c) + kRows * c_ld);
  std::int32_t* c3 = c2 + kChans;
  if (first) {
    _tile_zero(0);
    if (NB > 1) _tile_zero(1);
    if (MB > 1) _tile_zero(2);
    if (MB > 1 && NB > 1) _tile_zero(3);
  } else {
    _tile_loadd(0, c, c_ld);
    if (NB > 1) _tile_loadd(1, c1, c_ld);
    if (MB > 1) _tile_loadd(2, c2, c_ld);
    if (MB > 1 && NB > 1) _tile_loadd(3, c3, c_ld);
  }
  for (int i = 0; i < k; ++i) {
    _tile_loadd(4, a + std::int64_t(i) * kBTile, kBytes);
    if (MB > 1) _tile_loadd(5, a + a_ld + std::int64_t(i) * kBTile, kBytes);
    _tile_loadd(6, b + std::int64_t(i) * kBTile, kBytes);
    if (NB > 1) _tile_loadd(7, b + b_ld + std::int64_t(i) * kBTile, kBytes);
    _tile_dpbssd(0, 4, 6);
    if (NB > 1) _tile_dpbssd(1, 4, 7);
    if (MB > 1) _tile_dpbssd(2, 5, 6);
    if (MB > 1 && NB > 1) _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, c, c_ld);
  if (NB > 1) _tile_stored(1, c1, c_ld);
  if (MB > 1) _tile_stored(2, c2, c_ld);
  if (MB > 1 && NB > 1) _tile_stored(3, c3, c_ld);
}

void dense_amx(const word_t* in, const Geom& g, int group, const void* wts, const std::int32_t* wsum,
               std::int64_t pix_begin, std::int64_t pix_end, std::int32_t* dot, std::int64_t dot_ld, void* scratch) {
  const int tile = int(pix_end - pix_begin);
  const int k = g.taps() * g.g_words(), og = g.cout_g(), o0 = group * og;
  const std::int64_t kb = std::int64_t(k) * kBytes;
  Scratch s = carve(scratch, g, tile);
  const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
  gather_tile(in, g, group, pix_begin, tile, s.n_oob, s.oob, [&](int p, int i, word_t v) {
    std::int8_t* dst = s.act + (p / kRows) * kb * kRows + std::int64_t(i) * kBTile + (p % kRows) * kBytes;
    _mm512_store_si512(dst, _mm512_mask_blend_epi8(__mmask64(v), plus, minus));
  });
  for (std::int64_t p = tile, padded = padded_pixels(tile); p < padded; ++p)
    for (int i = 0; i < k; ++i)
      std::memset(s.act + (p / kRows) * kb * kRows + std::int64_t(i) * kBTile + (p % kRows) * kBytes, 0, kBytes);
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = kRows;
    cfg.colsb[t] = kBytes;
  }
  _tile_loadconfig(&cfg);
  const std::int8_t* b = static_cast<const std::int8_t*>(wts);
  const std::int64_t b_ld = kb * kRows;  // bytes per chunk of 16 output channels: k B tiles
  const int chunks = (og + kChans - 1) / kChans, c_cols = c_columns(og);
  const std::int64_t c_ld = 4 * std::int64_t(c_cols);
  // Per block of 32 pixels, K in slices of kSlice words (the block's A slice stays in L1 while
  // every output channel pair streams its B slice); the counts accumulate in s.c between slices.
  for (std::int64_t p = 0; p < tile; p += kBlockPix) {
    const int rows = int(p + kBlockPix <= tile ? kBlockPix : tile - p);
    const std::int8_t* a = s.act + p * kb;
    for (int k0 = 0; k0 < k; k0 += kSlice) {
      const int kn = imin(kSlice, k - k0);
      const std::int8_t* ak = a + std::int64_t(k0) * kBTile;
      for (int c0 = 0; c0 < chunks; c0 += 2) {
        const std::int8_t* bc = b + c0 * b_ld + std::int64_t(k0) * kBTile;
        std::int32_t* cc = s.c + c0 * kChans;
        const bool two = chunks - c0 > 1;
        if (rows > kRows) {
          if (two) block<2, 2>(ak, b_ld, bc, b_ld, kn, cc, c_ld, k0 == 0);
          else block<2, 1>(ak, b_ld, bc, b_ld, kn, cc, c_ld, k0 == 0);
        } else {
          if (two) block<1, 2>(ak, b_ld, bc, b_ld, kn, cc, c_ld, k0 == 0);
          else block<1, 1>(ak, b_ld, bc, b_ld, kn, cc, c_ld, k0 == 0);
        }
      }
    }
    for (int r = 0; r < rows; ++r) {
      std::int32_t* d = dot + (p + r) * dot_ld + o0;
      const std::int32_t* cr = s.c + std::int64_t(r) * c_cols;
      for (int o = 0; o < og; o += 16) {
        const __mmask16 m = og - o >= 16 ? __mmask16(0xffff) : __mmask16((1u << (og - o)) - 1);
        _mm512_mask_storeu_epi32(d + o, m, _mm512_loadu_si512(cr + o));
      }
    }
  }
  _tile_release();
  correct_tile(g, group, dot, dot_ld, tile, s.n_oob, s.oob, wsum);
}

Kernels make_table() {
  Kernels t = *kernels_avx512();
  t.name = "amx";
  t.dense = dense_amx;
  t.dense_scratch = dense_scratch_amx;
  t.prepare_dense = prepare_dense_amx;
  t.dense_fused = nullptr;  // a forced amx row runs its own dense core on every layer
  return t;
}

}  // namespace

const Kernels* kernels_amx() {
  if (!kernels_avx512()) return nullptr;
  static const Kernels table = make_table();
  return &table;
}

}  // namespace bitnas

#else  // not x86-64, or a compiler without AMX: no AMX kernels

namespace bitnas {
const Kernels* kernels_amx() { return nullptr; }
}  // namespace bitnas

#endif

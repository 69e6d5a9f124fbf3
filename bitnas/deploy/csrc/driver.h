// Driver: threads, and one binary convolution with its output transform, on any row of the ISA
// table (isa.h); `isa` arguments are row indices.
#pragma once

#include <cstdint>
#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine.h"
#include "isa.h"

namespace bitnas {

// Run fn(task, thread) for task in [0, ntasks) on up to `threads` threads (the caller is one).
void parallel_for(int threads, std::int64_t ntasks, const std::function<void(std::int64_t, int)>& fn);

// Pack float NHWC pixels (pixel stride ld) into words; sign of x*scale+shift (scale/shift optional).
void pack(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale, const float* shift,
          word_t* out, int isa, int threads);

// The static part of an output transform (per output channel vectors, empty when unused).
struct Transform {
  std::vector<float> mul, add, slope, shift_in, shift_out, bits_scale, bits_shift;
  std::vector<std::int32_t> thr_sign, thr;
  int act = kActNone;
  EpiParams params() const;
};

// One binary convolution: weights laid out for every ISA once, run on packed activations.
class BinaryConv {
 public:
  // neg: (cout, cin/groups, kh, kw) bytes, non-zero where the weight is -1.
  BinaryConv(const std::uint8_t* neg, int cout, int cin, int groups, int kh, int kw, int sh, int sw, int dh,
             int dw, int pt, int pl, bool pad_one);
  BinaryConv(const BinaryConv& other);  // copies the weights, not the per-row layouts
  void set_transform(Transform t) { transform_ = std::move(t); }
  const Transform& transform() const { return transform_; }
  Geom geom(int n, int h, int w, int oh, int ow) const;
  bool depthwise() const { return depthwise_; }
  // Input: (n, h, w, words_for(cin)) words; the outputs and addends are described by io.
  // pick: where the row has a rival (isa.h), run the dense core on whichever of the two was
  // faster for this input shape and thread count (the row by at least 10 %), timed once on the
  // first call with that shape (both give the same integers, so the choice never changes a result).
  void run(const word_t* in, int n, int h, int w, int oh, int ow, const EpiIO& io, int isa, int threads,
           bool pick = false) const;
  // The row whose kernels ran the last call (-1 before any).
  int last_row() const { return last_row_.load(); }

 private:
  void run_dense(const word_t* in, const Geom& g, const EpiIO& io, int isa, int threads) const;
  void run_depthwise(const word_t* in, const Geom& g, const EpiIO& io, int isa, int threads) const;
  void prepare(int isa) const;
  int pick_row(const word_t* in, const Geom& g, int isa, int threads) const;
  // The zero-padding correction of a framed input (engine.h: Framed::fix / fix_rows) for this
  // geometry, built on the first call with it and kept (it depends on the weights and sizes only).
  struct BorderFix {
    std::vector<std::int32_t> fix, rows;
  };
  const BorderFix& border_fix(const Geom& g) const;

  Geom base_;
  std::vector<word_t> canon_;        // [cout][taps][g_words]
  std::vector<std::int32_t> wsum_;   // [taps][cout]: sum over a tap's input channels of w (+-1)
  std::vector<std::uint8_t> neg_;    // (cout, cin_g, kh, kw) as given, for the per-row layouts
  bool depthwise_ = false;
  // Per ISA row, laid out on first use (a row the CPU lacks is never laid out): the dense
  // weights, groups back to back, and the depthwise [taps][channel_pad] sign bytes.
  struct RowWeights {
    bool ready = false;
    std::vector<word_t> dense;
    std::int64_t group_stride = 0;
    std::vector<std::int8_t> dw;
  };
  mutable std::vector<RowWeights> rows_;
  mutable std::mutex prepare_mutex_;
  Transform transform_;
  // pick's choices: (n, h, w, oh, ow, threads) -> row.
  mutable std::map<std::array<int, 6>, int> choices_;
  mutable std::mutex choice_mutex_;
  // border_fix's tables: (h, w, oh, ow) -> table; map nodes never move, so references stay valid.
  mutable std::map<std::array<int, 4>, BorderFix> fixes_;
  mutable std::mutex fix_mutex_;
  mutable std::atomic<int> last_row_{-1};
};

}  // namespace bitnas

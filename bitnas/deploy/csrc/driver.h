// Driver: run-time ISA choice, threads, and one binary convolution with its output transform.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine.h"

namespace bitnas {

enum class Isa { kReference = 0, kScalar = 1, kAvx2 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, popcnt = false, bmi2 = false;
};
CpuFeatures cpu_features();
bool isa_supported(Isa isa);
Isa best_isa();
const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* out);  // "reference" | "scalar" | "avx2"

// Run fn(task, thread) for task in [0, ntasks) on up to `threads` threads (the caller is one).
void parallel_for(int threads, std::int64_t ntasks, const std::function<void(std::int64_t, int)>& fn);

// Pack float NHWC pixels (pixel stride ld) into words; sign of x*scale+shift (scale/shift optional).
void pack(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale, const float* shift,
          word_t* out, Isa isa, int threads);

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
  void set_transform(Transform t) { transform_ = std::move(t); }
  const Transform& transform() const { return transform_; }
  Geom geom(int n, int h, int w, int oh, int ow) const;
  bool depthwise() const { return depthwise_; }
  // Input: (n, h, w, words_for(cin)) words; the outputs and addends are described by io.
  void run(const word_t* in, int n, int h, int w, int oh, int ow, const EpiIO& io, Isa isa, int threads) const;

 private:
  void run_dense(const word_t* in, const Geom& g, const EpiIO& io, const Kernels* k, int slot, int threads) const;
  void run_depthwise(const word_t* in, const Geom& g, const EpiIO& io, const Kernels* k, int threads) const;

  Geom base_;
  std::vector<word_t> canon_;        // [cout][taps][g_words]
  std::vector<std::int32_t> wsum_;   // [taps][cout]: sum over a tap's input channels of w (+-1)
  std::vector<word_t> dense_[2];     // per optimised ISA (scalar, avx2): groups' layouts back to back
  std::int64_t group_stride_[2] = {0, 0};
  bool depthwise_ = false;
  int cpad_ = 0;                     // depthwise: channels rounded up to 32
  std::vector<std::int8_t> dw_;      // depthwise: [taps][cpad] sign bytes
  Transform transform_;
};

}  // namespace bitnas

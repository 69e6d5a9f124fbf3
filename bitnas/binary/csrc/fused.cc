// Fused element-wise passes of 1-bit training (pybind11, raw buffers): one pass where torch takes
// three to five. Every kernel computes the same IEEE float operations, in the same order, as the
// torch expression it replaces (compiled with -ffp-contract=off, so no FMA contraction): results
// are bitwise those of the torch path. Buffers are dense and share one memory layout (the caller
// checks); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "layout.h"
#include "kernel_util.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <vector>

namespace py = pybind11;

namespace {

using bitnas_kernels::ptr;

// sign with sign(0) = +1: torch.ge(x, 0) written as 1.0/0.0, then ·2 − 1 (NaN → −1 as there).
BITNAS_CLONES void sign_kernel(const float* __restrict x, float* __restrict out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = x[i] >= 0.0f ? 1.0f : -1.0f;
}

// ApproxSign gradient: (((|x| · −2) + 2) clamped below at 0) · g; NaN propagates as clamp_min does.
BITNAS_CLONES void approx_sign_grad_kernel(const float* __restrict x, const float* __restrict g,
                                           float* __restrict out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    float t = std::fabs(x[i]) * -2.0f;
    t = t + 2.0f;
    t = t < 0.0f ? 0.0f : t;
    out[i] = t * g[i];
  }
}

// Clipped straight-through gradient: (|x| ≤ clip ? 1 : 0) · g (a product, so 0 · inf = NaN and
// 0 · (−g) = −0 as in torch).
BITNAS_CLONES void ste_sign_grad_kernel(const float* __restrict x, const float* __restrict g,
                                        float* __restrict out, std::int64_t n, float clip) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float m = std::fabs(x[i]) <= clip ? 1.0f : 0.0f;
    out[i] = m * g[i];
  }
}

// The gradient of a sign input that also feeds a residual add, in one pass: the surrogate gradient
// (ApproxSign's (((|x| · −2) + 2) clamped at 0) · g, or the clipped STE's (|x| ≤ clip ? 1 : 0) · g)
// plus the residual's gradient r — the sum autograd forms of the two terms (a float add of two
// terms commutes, so its order of arrival does not matter). x, g and out are `rows` dense rows of
// c elements; r's rows are `r_stride` elements apart (a channel slice of a wider channels-last
// gradient, as a concatenation's backward hands out; r_stride == c when dense). clip < 0: ApproxSign.
BITNAS_CLONES void sign_grad_add_kernel(const float* __restrict x, const float* __restrict g,
                                        const float* __restrict r, float* __restrict out, std::int64_t rows,
                                        std::int64_t c, std::int64_t r_stride, float clip) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = g + i * c;
    const float* rr = r + i * r_stride;
    float* o = out + i * c;
    if (clip < 0.0f) {
      for (std::int64_t j = 0; j < c; ++j) {
        float t = std::fabs(xr[j]) * -2.0f;
        t = t + 2.0f;
        t = t < 0.0f ? 0.0f : t;
        const float u = t * gr[j];
        o[j] = rr[j] + u;
      }
    } else {
      for (std::int64_t j = 0; j < c; ++j) {
        const float m = std::fabs(xr[j]) <= clip ? 1.0f : 0.0f;
        const float u = m * gr[j];
        o[j] = rr[j] + u;
      }
    }
  }
}

// The binarised kernel α·sign(W) of `rows` output channels of `per_row` weights each (α one per
// row): α times ±1 is exact, so this is the torch product bit for bit — α or −α, except that a NaN
// α stays itself (the product returns its NaN operand; a compiler may turn α·−1 into a sign flip).
BITNAS_CLONES void scaled_sign_kernel(const float* __restrict w, const float* __restrict alpha,
                                      float* __restrict out, std::int64_t rows, std::int64_t per_row) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float a = alpha[i];
    const float na = std::isnan(a) ? a : -a;
    for (std::int64_t j = 0; j < per_row; ++j) out[i * per_row + j] = w[i * per_row + j] >= 0.0f ? a : na;
  }
}

// Its gradient through the clipped STE: (|W| ≤ clip ? 1 : 0) · (g · α), the product's backward
// (g · α) rounded first, as the two torch backward nodes compute it.
BITNAS_CLONES void scaled_ste_sign_grad_kernel(const float* __restrict w, const float* __restrict g,
                                               const float* __restrict alpha, float* __restrict out,
                                               std::int64_t rows, std::int64_t per_row, float clip) {
  for (std::int64_t i = 0; i < rows; ++i) {
    const float a = alpha[i];
    for (std::int64_t j = 0; j < per_row; ++j) {
      const std::int64_t k = i * per_row + j;
      const float m = std::fabs(w[k]) <= clip ? 1.0f : 0.0f;
      const float t = g[k] * a;
      out[k] = m * t;
    }
  }
}

// Batch-norm backward of a channels-last (N·H·W rows × C) float tensor in training mode, as
// ATen's single-threaded CPU kernel computes it: per channel, float sums over the rows in order
// of Σdy and Σ(x − mean)·dy (a fused multiply-add, as ATen's vectorised loop compiles it), then
// dx = ((dy − Σdy/N) − (x − mean)·k)·invstd·w with k = Σ(x − mean)·dy·invstd·invstd/N (one fused
// multiply-add for the first `fused_c` channels, ATen's vector blocks; separate operations in its
// scalar tail), grad_weight = Σ(x − mean)·dy·invstd, grad_bias = Σdy. A channel count known at
// compile time (CB > 0) lets each row run as whole vectors.
template <int CB>
BITNAS_CLONES void bn_backward_sums(const float* __restrict x, const float* __restrict dy,
                                    const float* __restrict mean, float* __restrict sum,
                                    float* __restrict dotp, std::int64_t rows, std::int64_t cr) {
  const std::int64_t c = CB > 0 ? CB : cr;
  for (std::int64_t j = 0; j < c; ++j) { sum[j] = 0.0f; dotp[j] = 0.0f; }
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = dy + i * c;
#pragma GCC ivdep
    for (std::int64_t j = 0; j < c; ++j) {
      sum[j] = sum[j] + gr[j];
      dotp[j] = std::fma(xr[j] - mean[j], gr[j], dotp[j]);
    }
  }
}

template <int CB>
BITNAS_CLONES void bn_backward_input(const float* __restrict x, const float* __restrict dy,
                                     const float* __restrict mean, const float* __restrict k,
                                     const float* __restrict gmean, const float* __restrict invstd,
                                     const float* __restrict w, float* __restrict dx, std::int64_t rows,
                                     std::int64_t cr, std::int64_t fused_c) {
  const std::int64_t c = CB > 0 ? CB : cr;
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = dy + i * c;
    float* out = dx + i * c;
    if (CB > 0 || fused_c == c) {
      for (std::int64_t j = 0; j < c; ++j) {
        const float t = std::fma(-(xr[j] - mean[j]), k[j], gr[j] - gmean[j]);
        out[j] = (t * invstd[j]) * w[j];
      }
      continue;
    }
    for (std::int64_t j = 0; j < fused_c; ++j) {
      const float t = std::fma(-(xr[j] - mean[j]), k[j], gr[j] - gmean[j]);
      out[j] = (t * invstd[j]) * w[j];
    }
    for (std::int64_t j = fused_c; j < c; ++j) {
      const float centred = (xr[j] - mean[j]) * k[j];
      const float t = (gr[j] - gmean[j]) - centred;
      out[j] = (t * invstd[j]) * w[j];
    }
  }
}

template <int CB>
void bn_backward_c(const float* x, const float* dy, const float* mean, const float* invstd, const float* w,
                   float* dx, float* grad_weight, float* grad_bias, std::int64_t rows, std::int64_t c,
                   std::int64_t fused_c) {
  std::vector<float> sum(c), dotp(c), k(c), gmean(c);
  bn_backward_sums<CB>(x, dy, mean, sum.data(), dotp.data(), rows, c);
  const float n = static_cast<float>(rows);
  for (std::int64_t j = 0; j < c; ++j) {
    k[j] = ((dotp[j] * invstd[j]) * invstd[j]) / n;
    gmean[j] = sum[j] / n;
    if (grad_weight) grad_weight[j] = dotp[j] * invstd[j];
    if (grad_bias) grad_bias[j] = sum[j];
  }
  if (dx) bn_backward_input<CB>(x, dy, mean, k.data(), gmean.data(), invstd, w, dx, rows, c, fused_c);
}

void bn_backward(const float* x, const float* dy, const float* mean, const float* invstd, const float* w,
                 float* dx, float* grad_weight, float* grad_bias, std::int64_t rows, std::int64_t c,
                 std::int64_t fused_c) {
  if (fused_c == c) {  // whole blocks of 8: the common channel counts get fixed-size rows
    switch (c) {
      case 8: return bn_backward_c<8>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      case 16: return bn_backward_c<16>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      case 24: return bn_backward_c<24>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      case 32: return bn_backward_c<32>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      case 48: return bn_backward_c<48>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      case 64: return bn_backward_c<64>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
      default: break;
    }
  }
  bn_backward_c<0>(x, dy, mean, invstd, w, dx, grad_weight, grad_bias, rows, c, fused_c);
}

// The per-channel coefficients of the generic replay from its double sums Σ(x − mean)·dy (dotp)
// and Σdy (sum): k, Σdy/N and the parameter gradients, in the float expressions ATen uses.
inline void bn_backward_coefficients(const double* dotp, const float* invstd, const float* sum, std::int64_t rows,
                                     std::int64_t c, float* k, float* gmean, float* grad_weight, float* grad_bias) {
  const float n = static_cast<float>(rows);
  for (std::int64_t j = 0; j < c; ++j) {
    k[j] = ((static_cast<float>(dotp[j]) * invstd[j]) * invstd[j]) / n;
    gmean[j] = sum[j] / n;
    if (grad_weight) grad_weight[j] = static_cast<float>(dotp[j] * static_cast<double>(invstd[j]));
    if (grad_bias) grad_bias[j] = sum[j];
  }
}

// The same backward when the output gradient is not laid out like the input (a channel slice of
// a larger channels-last gradient, as the backward of a concatenation hands out, or an NCHW one):
// ATen then runs its generic loops, which this replays — Σ(x − mean)·dy accumulated in double
// over the rows in order (each product rounded to float first), Σdy given (ATen's own `sum`),
// then the float expressions k = float(Σ(x − mean)·dy)·invstd·invstd/N, t = (x − mean)·k,
// dx = ((dy − Σdy/N) − t)·invstd·w, with no fused multiply-adds. dy is addressed through its
// element strides (sn, sc, sh, sw); x and dx are dense channels-last.
// The generic replay below for a gradient whose rows of C channels are contiguous and `rs`
// elements apart (a channel slice of a wider channels-last gradient): the same float products
// and the same double sums per channel in row order, with the channel count known at compile time
// (CB > 0) so that each row runs as whole vectors.
template <int CB>
BITNAS_CLONES void bn_backward_rows(const float* __restrict x, const float* __restrict dy, std::int64_t rows,
                                    std::int64_t cr, std::int64_t rs, const float* __restrict mean,
                                    const float* __restrict invstd, const float* __restrict w,
                                    const float* __restrict sum, float* __restrict dx,
                                    float* __restrict grad_weight, float* __restrict grad_bias) {
  const std::int64_t c = CB > 0 ? CB : cr;
  std::vector<double> dotp_v(c, 0.0);
  std::vector<float> k_v(c), gmean_v(c);
  double* dotp = dotp_v.data();
  float* k = k_v.data();
  float* gmean = gmean_v.data();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = dy + i * rs;
    for (std::int64_t j = 0; j < c; ++j) {
      const float p = (xr[j] - mean[j]) * gr[j];
      dotp[j] += static_cast<double>(p);
    }
  }
  bn_backward_coefficients(dotp, invstd, sum, rows, c, k, gmean, grad_weight, grad_bias);
  if (!dx) return;
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = dy + i * rs;
    float* out = dx + i * c;
    for (std::int64_t j = 0; j < c; ++j) {
      const float t = (xr[j] - mean[j]) * k[j];
      const float u = (gr[j] - gmean[j]) - t;
      out[j] = (u * invstd[j]) * w[j];
    }
  }
}

void bn_backward_generic(const float* x, const float* dy, const std::int64_t* shape, const std::int64_t* st,
                         const float* mean, const float* invstd, const float* w, const float* sum, float* dx,
                         float* grad_weight, float* grad_bias) {
  const std::int64_t nb = shape[0], c = shape[1], h = shape[2], wd = shape[3], rows = nb * h * wd;
  const std::int64_t rs = wd > 1 ? st[3] : h > 1 ? st[2] : nb > 1 ? st[0] : c;
  if (st[1] == 1 && rs >= c && (wd == 1 || st[3] == rs) && (h == 1 || st[2] == wd * rs) &&
      (nb == 1 || st[0] == h * wd * rs)) {  // rows of contiguous channels, evenly spaced
    switch (c) {
      case 8: return bn_backward_rows<8>(x, dy, rows, c, rs, mean, invstd, w, sum, dx, grad_weight, grad_bias);
      case 16: return bn_backward_rows<16>(x, dy, rows, c, rs, mean, invstd, w, sum, dx, grad_weight, grad_bias);
      case 32: return bn_backward_rows<32>(x, dy, rows, c, rs, mean, invstd, w, sum, dx, grad_weight, grad_bias);
      default: return bn_backward_rows<0>(x, dy, rows, c, rs, mean, invstd, w, sum, dx, grad_weight, grad_bias);
    }
  }
  std::vector<double> dotp(c, 0.0);
  std::vector<float> k(c), gmean(c);
  auto grad_row = [&](std::int64_t i) {
    const std::int64_t n = i / (h * wd), r = i % (h * wd);
    return dy + n * st[0] + (r / wd) * st[2] + (r % wd) * st[3];
  };
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = grad_row(i);
    for (std::int64_t j = 0; j < c; ++j) {
      const float p = (xr[j] - mean[j]) * gr[j * st[1]];
      dotp[j] += static_cast<double>(p);
    }
  }
  bn_backward_coefficients(dotp.data(), invstd, sum, rows, c, k.data(), gmean.data(), grad_weight, grad_bias);
  if (!dx) return;
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    const float* gr = grad_row(i);
    float* out = dx + i * c;
    for (std::int64_t j = 0; j < c; ++j) {
      const float t = (xr[j] - mean[j]) * k[j];
      const float u = (gr[j * st[1]] - gmean[j]) - t;
      out[j] = (u * invstd[j]) * w[j];
    }
  }
}

// Batch-norm statistics of a channels-last (rows × C) float tensor as ATen's single-threaded
// channels-last kernel collects them: float sums over the rows in order, mean = float(sum / N)
// computed in double, then the float sums of (x − mean)² (a fused multiply-add).
template <int CB>
BITNAS_CLONES void bn_stats(const float* __restrict x, float* __restrict mean, float* __restrict var_sum,
                            std::int64_t rows, std::int64_t cr) {
  const std::int64_t c = CB > 0 ? CB : cr;
  std::vector<float> acc(c, 0.0f);
  float* a = acc.data();
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    for (std::int64_t j = 0; j < c; ++j) a[j] = xr[j] + a[j];
  }
  for (std::int64_t j = 0; j < c; ++j) {
    mean[j] = static_cast<float>((0.0 + static_cast<double>(a[j])) / static_cast<double>(rows));
    a[j] = 0.0f;
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* xr = x + i * c;
    for (std::int64_t j = 0; j < c; ++j) {
      const float d = xr[j] - mean[j];
      a[j] = std::fma(d, d, a[j]);
    }
  }
  for (std::int64_t j = 0; j < c; ++j) var_sum[j] = static_cast<float>(0.0 + static_cast<double>(a[j]));
}

// y = x·alpha + beta per channel (one fused multiply-add for the first `fused_c` channels), then
// + residual when one is given and + addend after it (separate roundings, as following torch adds);
// with S, also sign(y) into `sgn` (sign(0) = +1, NaN → −1, as `sign_kernel`) in the same pass,
// from the value just computed. Every element is computed on its own, so with a channel count CB
// known at compile time and below 16 the rows are taken R = 16 / CB at a time (one 16-float
// vector) with alpha and beta repeated R times: the same operations per element.
template <int CB, bool S, int NA>
BITNAS_CLONES void bn_apply_t(const float* __restrict x, const float* __restrict alpha,
                              const float* __restrict beta, float* __restrict y, std::int64_t rows, std::int64_t cr,
                              std::int64_t fused_c, const float* __restrict residual,
                              const float* __restrict addend, float* __restrict sgn) {
  constexpr int R = CB > 0 && CB < 16 && 16 % CB == 0 ? 16 / CB : 1;
  const std::int64_t c = CB > 0 ? CB : cr;
  if (CB > 0) {
    constexpr int W = CB > 0 ? R * CB : 1;
    float a[W], b[W];
    for (int j = 0; j < W; ++j) { a[j] = alpha[j % c]; b[j] = beta[j % c]; }
    const std::int64_t blocks = rows / R;
    for (std::int64_t i = 0; i < blocks; ++i) {
      const std::int64_t o = i * W;
      for (int j = 0; j < W; ++j) {
        float v = std::fma(x[o + j], a[j], b[j]);
        if (NA >= 1) v = v + residual[o + j];
        if (NA >= 2) v = v + addend[o + j];
        y[o + j] = v;
        if (S) sgn[o + j] = v >= 0.0f ? 1.0f : -1.0f;
      }
    }
    for (std::int64_t k = blocks * W; k < rows * c; ++k) {
      const std::int64_t j = k % c;
      float v = std::fma(x[k], alpha[j], beta[j]);
      if (NA >= 1) v = v + residual[k];
      if (NA >= 2) v = v + addend[k];
      y[k] = v;
      if (S) sgn[k] = v >= 0.0f ? 1.0f : -1.0f;
    }
    return;
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    const std::int64_t o = i * c;
    for (std::int64_t j = 0; j < c; ++j) {
      float v;
      if (j < fused_c) {
        v = std::fma(x[o + j], alpha[j], beta[j]);
      } else {
        const float t = x[o + j] * alpha[j];
        v = t + beta[j];
      }
      if (NA >= 1) v = v + residual[o + j];
      if (NA >= 2) v = v + addend[o + j];
      y[o + j] = v;
      if (S) sgn[o + j] = v >= 0.0f ? 1.0f : -1.0f;
    }
  }
}

template <bool S, int NA>
void bn_apply_s(const float* x, const float* alpha, const float* beta, float* y, std::int64_t rows, std::int64_t c,
                std::int64_t fused_c, const float* residual, const float* addend, float* sgn) {
  if (fused_c == c) {  // a channel count known at compile time: each row runs as whole vectors
    switch (c) {
      case 8: return bn_apply_t<8, S, NA>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
      case 16: return bn_apply_t<16, S, NA>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
      case 32: return bn_apply_t<32, S, NA>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
      case 64: return bn_apply_t<64, S, NA>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
      default: break;
    }
  }
  bn_apply_t<0, S, NA>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
}

template <bool S>
void bn_apply_n(const float* x, const float* alpha, const float* beta, float* y, std::int64_t rows, std::int64_t c,
                std::int64_t fused_c, const float* residual, const float* addend, float* sgn) {
  if (residual && addend) return bn_apply_s<S, 2>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
  if (residual) return bn_apply_s<S, 1>(x, alpha, beta, y, rows, c, fused_c, residual, nullptr, sgn);
  bn_apply_s<S, 0>(x, alpha, beta, y, rows, c, fused_c, nullptr, nullptr, sgn);
}

void bn_apply(const float* x, const float* alpha, const float* beta, float* y, std::int64_t rows, std::int64_t c,
              std::int64_t fused_c, const float* residual = nullptr, const float* addend = nullptr,
              float* sgn = nullptr) {
  if (sgn) return bn_apply_n<true>(x, alpha, beta, y, rows, c, fused_c, residual, addend, sgn);
  bn_apply_n<false>(x, alpha, beta, y, rows, c, fused_c, residual, addend, nullptr);
}

// Training-mode batch-norm forward of a channels-last float tensor, as ATen's single-threaded
// kernels compute it: the statistics above; invstd = float(1 / sqrt(double(var_sum / N) + eps));
// running_mean = m·mean + (1 − m)·running_mean (separate roundings), running_var = a fused
// m·var_sum/(N − 1) + float((1 − m)·running_var); y = x·alpha + beta (fused) with
// alpha = invstd·w, beta = b − mean·alpha (fused), + residual if given, then + addend if given
// (only with a residual); sign(y) into `sgn` in the same pass if given. Null running statistics
// are skipped.
void bn_forward(const float* x, const float* w, const float* b, float* running_mean, float* running_var, float* y,
                float* save_mean, float* save_invstd, std::int64_t rows, std::int64_t c, float momentum, double eps,
                const float* residual, const float* addend, float* sgn) {
  std::vector<float> var_sum(c), alpha(c), beta(c);
  switch (c) {
    case 8: bn_stats<8>(x, save_mean, var_sum.data(), rows, c); break;
    case 16: bn_stats<16>(x, save_mean, var_sum.data(), rows, c); break;
    case 32: bn_stats<32>(x, save_mean, var_sum.data(), rows, c); break;
    default: bn_stats<0>(x, save_mean, var_sum.data(), rows, c); break;
  }
  const float n = static_cast<float>(rows), n1 = static_cast<float>(rows - 1), keep = 1.0f - momentum;
  for (std::int64_t j = 0; j < c; ++j) {
    const float var = var_sum[j] / n;
    save_invstd[j] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + eps));
    if (running_mean) {
      const float a = momentum * save_mean[j], r = keep * running_mean[j];
      running_mean[j] = a + r;
    }
    if (running_var) {
      const float unbiased = var_sum[j] / n1, r = keep * running_var[j];
      running_var[j] = std::fma(momentum, unbiased, r);
    }
    alpha[j] = save_invstd[j] * w[j];
    beta[j] = std::fma(-save_mean[j], alpha[j], b[j]);
  }
  bn_apply(x, alpha.data(), beta.data(), y, rows, c, c, residual, addend, sgn);
}

}  // namespace

PYBIND11_MODULE(_fused, m) {
  m.doc() = "bitnas: fused element-wise passes of 1-bit training (bitwise the torch expressions)";
  m.def("sign", [](std::uintptr_t x, std::uintptr_t out, std::int64_t n) {
    py::gil_scoped_release nogil;
    sign_kernel(ptr<const float>(x), ptr<float>(out), n);
  }, "out = sign(x), sign(0) = +1 (float32 buffers of n elements)");
  m.def("approx_sign_grad", [](std::uintptr_t x, std::uintptr_t g, std::uintptr_t out, std::int64_t n) {
    py::gil_scoped_release nogil;
    approx_sign_grad_kernel(ptr<const float>(x), ptr<const float>(g), ptr<float>(out), n);
  }, "out = g * max(0, 2 - 2|x|)");
  m.def("ste_sign_grad", [](std::uintptr_t x, std::uintptr_t g, std::uintptr_t out, std::int64_t n, float clip) {
    py::gil_scoped_release nogil;
    ste_sign_grad_kernel(ptr<const float>(x), ptr<const float>(g), ptr<float>(out), n, clip);
  }, "out = g * 1[|x| <= clip]");
  m.def("sign_grad_add", [](std::uintptr_t x, std::uintptr_t g, std::uintptr_t r, std::uintptr_t out,
                            std::int64_t rows, std::int64_t c, std::int64_t r_stride, float clip) {
    py::gil_scoped_release nogil;
    sign_grad_add_kernel(ptr<const float>(x), ptr<const float>(g), ptr<const float>(r), ptr<float>(out), rows, c,
                         r_stride, clip);
  }, "out = r + g * max(0, 2 - 2|x|) (clip < 0) or r + g * 1[|x| <= clip]; r's rows r_stride apart");
  m.def("scaled_sign", [](std::uintptr_t w, std::uintptr_t alpha, std::uintptr_t out, std::int64_t rows,
                          std::int64_t per_row) {
    py::gil_scoped_release nogil;
    scaled_sign_kernel(ptr<const float>(w), ptr<const float>(alpha), ptr<float>(out), rows, per_row);
  }, "out = alpha[row] * sign(w), sign(0) = +1 (rows x per_row)");
  m.def("scaled_ste_sign_grad", [](std::uintptr_t w, std::uintptr_t g, std::uintptr_t alpha, std::uintptr_t out,
                                   std::int64_t rows, std::int64_t per_row, float clip) {
    py::gil_scoped_release nogil;
    scaled_ste_sign_grad_kernel(ptr<const float>(w), ptr<const float>(g), ptr<const float>(alpha), ptr<float>(out),
                                rows, per_row, clip);
  }, "out = 1[|w| <= clip] * (g * alpha[row])");
  // The two above over many weight tensors in one call (a network's binary convs, once per step).
  m.def("scaled_sign_many", [](std::vector<std::uintptr_t> w, std::vector<std::uintptr_t> alpha,
                               std::vector<std::uintptr_t> out, std::vector<std::int64_t> rows,
                               std::vector<std::int64_t> per_row) {
    py::gil_scoped_release nogil;
    for (std::size_t i = 0; i < w.size(); ++i)
      scaled_sign_kernel(ptr<const float>(w[i]), ptr<const float>(alpha[i]), ptr<float>(out[i]), rows[i], per_row[i]);
  }, "scaled_sign over lists of buffers (w, alpha, out, rows, per_row)");
  m.def("scaled_ste_sign_grad_many", [](std::vector<std::uintptr_t> w, std::vector<std::uintptr_t> g,
                                        std::vector<std::uintptr_t> alpha, std::vector<std::uintptr_t> out,
                                        std::vector<std::int64_t> rows, std::vector<std::int64_t> per_row,
                                        std::vector<float> clip) {
    py::gil_scoped_release nogil;
    for (std::size_t i = 0; i < w.size(); ++i)
      scaled_ste_sign_grad_kernel(ptr<const float>(w[i]), ptr<const float>(g[i]), ptr<const float>(alpha[i]),
                                  ptr<float>(out[i]), rows[i], per_row[i], clip[i]);
  }, "scaled_ste_sign_grad over lists of buffers (w, g, alpha, out, rows, per_row, clip)");
  m.def("bn_backward", [](std::uintptr_t x, std::uintptr_t dy, std::uintptr_t mean, std::uintptr_t invstd,
                          std::uintptr_t w, std::uintptr_t dx, std::uintptr_t grad_weight, std::uintptr_t grad_bias,
                          std::int64_t rows, std::int64_t c, std::int64_t fused_c) {
    py::gil_scoped_release nogil;
    bn_backward(ptr<const float>(x), ptr<const float>(dy), ptr<const float>(mean), ptr<const float>(invstd),
                ptr<const float>(w), ptr<float>(dx), ptr<float>(grad_weight), ptr<float>(grad_bias), rows, c, fused_c);
  }, "training-mode batch-norm backward of a channels-last float tensor (rows x c); 0 skips an output");
  m.def("bn_stats", [](std::uintptr_t x, std::uintptr_t mean, std::uintptr_t var_sum, std::int64_t rows,
                       std::int64_t c) {
    py::gil_scoped_release nogil;
    switch (c) {
      case 8: return bn_stats<8>(ptr<const float>(x), ptr<float>(mean), ptr<float>(var_sum), rows, c);
      case 16: return bn_stats<16>(ptr<const float>(x), ptr<float>(mean), ptr<float>(var_sum), rows, c);
      case 32: return bn_stats<32>(ptr<const float>(x), ptr<float>(mean), ptr<float>(var_sum), rows, c);
      default: return bn_stats<0>(ptr<const float>(x), ptr<float>(mean), ptr<float>(var_sum), rows, c);
    }
  }, "per-channel mean and sum of squared deviations of a channels-last float tensor (rows x c)");
  m.def("bn_apply", [](std::uintptr_t x, std::uintptr_t alpha, std::uintptr_t beta, std::uintptr_t y,
                       std::int64_t rows, std::int64_t c, std::int64_t fused_c) {
    py::gil_scoped_release nogil;
    bn_apply(ptr<const float>(x), ptr<const float>(alpha), ptr<const float>(beta), ptr<float>(y), rows, c, fused_c);
  }, "y = x * alpha + beta per channel of a channels-last float tensor (rows x c)");
  m.def("bn_forward", [](std::uintptr_t x, std::uintptr_t w, std::uintptr_t b, std::uintptr_t running_mean,
                         std::uintptr_t running_var, std::uintptr_t y, std::uintptr_t save_mean,
                         std::uintptr_t save_invstd, std::int64_t rows, std::int64_t c, float momentum, double eps,
                         std::uintptr_t residual, std::uintptr_t addend, std::uintptr_t sgn) {
    py::gil_scoped_release nogil;
    bn_forward(ptr<const float>(x), ptr<const float>(w), ptr<const float>(b), ptr<float>(running_mean),
               ptr<float>(running_var), ptr<float>(y), ptr<float>(save_mean), ptr<float>(save_invstd), rows, c,
               momentum, eps, ptr<const float>(residual), ptr<const float>(addend), ptr<float>(sgn));
  }, "training-mode batch-norm forward of a channels-last float tensor (rows x c), plus residual if not 0, then "
     "plus addend if not 0 (only with a residual), sign of the result into sgn if not 0; 0 skips running stats");
  m.def("bn_backward_generic", [](std::uintptr_t x, std::uintptr_t dy, std::int64_t n, std::int64_t c, std::int64_t h,
                                  std::int64_t w_, std::int64_t sn, std::int64_t sc, std::int64_t sh, std::int64_t sw,
                                  std::uintptr_t mean, std::uintptr_t invstd, std::uintptr_t w, std::uintptr_t sum,
                                  std::uintptr_t dx, std::uintptr_t grad_weight, std::uintptr_t grad_bias) {
    const std::int64_t shape[4] = {n, c, h, w_}, strides[4] = {sn, sc, sh, sw};
    py::gil_scoped_release nogil;
    bn_backward_generic(ptr<const float>(x), ptr<const float>(dy), shape, strides, ptr<const float>(mean),
                        ptr<const float>(invstd), ptr<const float>(w), ptr<const float>(sum), ptr<float>(dx),
                        ptr<float>(grad_weight), ptr<float>(grad_bias));
  }, "the same backward for dy of any strides (ATen's generic path); sum = dy summed per channel");
  bind_layout(m);
}

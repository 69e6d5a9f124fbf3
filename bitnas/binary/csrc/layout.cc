// Layout kernels of 1-bit training on channels-last float tensors: max pooling and its backward
// (bitwise ATen's channels-last kernels) and the gradient of a set of strided grids of one tensor
// (bitwise the zero fill plus one add per grid that it replaces). Raw buffers, GIL released.
#include "layout.h"
#include "kernel_util.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace py = pybind11;

namespace {

using bitnas_kernels::ptr;

// Max pooling (no dilation, floor mode) of a channels-last float tensor (n, h, w, c) as ATen's
// channels-last CPU kernel takes it: per output position the window is clipped to the image, the
// running maximum starts at −inf with the window's first in-image index, and an element replaces
// it when greater or NaN (so ties keep the first element in row order and the last NaN wins).
// Outputs are elements of x (no rounding); `idx` holds the flat h·w index of each maximum.
BITNAS_CLONES void max_pool_forward(const float* __restrict x, float* __restrict y, std::int32_t* __restrict idx,
                                    std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c,
                                    std::int64_t oh, std::int64_t ow, std::int64_t k, std::int64_t s,
                                    std::int64_t p) {
  for (std::int64_t b = 0; b < n; ++b) {
    for (std::int64_t i = 0; i < oh; ++i) {
      std::int64_t ih0 = i * s - p;
      const std::int64_t ih1 = std::min(ih0 + k, h);
      while (ih0 < 0) ++ih0;
      for (std::int64_t j = 0; j < ow; ++j) {
        std::int64_t iw0 = j * s - p;
        const std::int64_t iw1 = std::min(iw0 + k, w);
        while (iw0 < 0) ++iw0;
        float* yo = y + ((b * oh + i) * ow + j) * c;
        std::int32_t* io = idx + ((b * oh + i) * ow + j) * c;
        const std::int32_t first = static_cast<std::int32_t>(ih0 * w + iw0);
        for (std::int64_t ch = 0; ch < c; ++ch) {
          yo[ch] = -std::numeric_limits<float>::infinity();
          io[ch] = first;
        }
        for (std::int64_t ih = ih0; ih < ih1; ++ih) {
          for (std::int64_t iw = iw0; iw < iw1; ++iw) {
            const float* xr = x + ((b * h + ih) * w + iw) * c;
            const std::int32_t at = static_cast<std::int32_t>(ih * w + iw);
            for (std::int64_t ch = 0; ch < c; ++ch) {
              const float v = xr[ch];
              const bool take = (v > yo[ch]) || std::isnan(v);
              yo[ch] = take ? v : yo[ch];
              io[ch] = take ? at : io[ch];
            }
          }
        }
      }
    }
  }
}

// Its backward as ATen's channels-last kernel takes it: grad_input zero, then every output

// Its backward as ATen's channels-last kernel takes it: grad_input zero, then every output
// gradient added at its maximum's index, output positions in row order (the same float sums).
// Image by image (each image's zeros are written just before its adds, which touch that image
// only). The output gradient's rows of c channels are `go_rs` elements apart (c when dense, more
// for a channel slice of a wider channels-last gradient, as a concatenation's backward hands out).
BITNAS_CLONES void max_pool_backward(const float* __restrict go, const std::int32_t* __restrict idx,
                                     float* __restrict gi, std::int64_t n, std::int64_t hw, std::int64_t c,
                                     std::int64_t ohw, std::int64_t go_rs) {
  for (std::int64_t b = 0; b < n; ++b) {
    float* g = gi + b * hw * c;
    std::fill(g, g + hw * c, 0.0f);
    for (std::int64_t o = 0; o < ohw; ++o) {
      const float* gr = go + (b * ohw + o) * go_rs;
      const std::int32_t* ir = idx + (b * ohw + o) * c;
      for (std::int64_t ch = 0; ch < c; ++ch) g[ir[ch] * c + ch] += gr[ch];
    }
  }
}

// The gradient of `ng` strided grids x[:, :, h0::sh, w0::sw] (grids that do not overlap) of a
// channels-last (n, h, w, c) tensor from their dense channels-last gradients: 0 + g at each grid
// element (+0 for a −0, as the add into zeros gives), 0 elsewhere; one write of every element
// instead of a zero fill and one strided add per grid.
BITNAS_CLONES void grid_scatter(const float* const* grads, const std::int64_t* h0, const std::int64_t* w0,
                                std::int64_t ng, std::int64_t sh, std::int64_t sw, float* __restrict out,
                                std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c) {
  for (std::int64_t b = 0; b < n; ++b) {
    for (std::int64_t i = 0; i < h; ++i) {
      for (std::int64_t j = 0; j < w; ++j) {
        float* o = out + ((b * h + i) * w + j) * c;
        const float* src = nullptr;
        for (std::int64_t k = 0; k < ng && src == nullptr; ++k) {
          if (i >= h0[k] && j >= w0[k] && (i - h0[k]) % sh == 0 && (j - w0[k]) % sw == 0) {
            const std::int64_t gh = (h - h0[k] + sh - 1) / sh, gw = (w - w0[k] + sw - 1) / sw;
            src = grads[k] + ((b * gh + (i - h0[k]) / sh) * gw + (j - w0[k]) / sw) * c;
          }
        }
        if (src == nullptr) {
          for (std::int64_t ch = 0; ch < c; ++ch) o[ch] = 0.0f;
        } else {
          for (std::int64_t ch = 0; ch < c; ++ch) o[ch] = 0.0f + src[ch];
        }
      }
    }
  }
}

}  // namespace

void bind_layout(py::module_& m) {
  m.def("max_pool_forward", [](std::uintptr_t x, std::uintptr_t y, std::uintptr_t idx, std::int64_t n,
                               std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t oh, std::int64_t ow,
                               std::int64_t k, std::int64_t s, std::int64_t p) {
    py::gil_scoped_release nogil;
    max_pool_forward(ptr<const float>(x), ptr<float>(y), ptr<std::int32_t>(idx), n, h, w, c, oh, ow, k, s, p);
  }, "k x k max pooling (stride s, padding p, floor mode) of a channels-last float tensor; int32 indices");
  m.def("max_pool_backward", [](std::uintptr_t go, std::uintptr_t idx, std::uintptr_t gi, std::int64_t n,
                                std::int64_t hw, std::int64_t c, std::int64_t ohw, std::int64_t go_rs) {
    py::gil_scoped_release nogil;
    max_pool_backward(ptr<const float>(go), ptr<const std::int32_t>(idx), ptr<float>(gi), n, hw, c, ohw, go_rs);
  }, "gradient of max_pool_forward (bitwise ATen's scatter-add into zeros); go's rows go_rs elements apart");
  m.def("grid_scatter", [](std::vector<std::uintptr_t> grads, std::vector<std::int64_t> h0,
                           std::vector<std::int64_t> w0, std::int64_t sh, std::int64_t sw, std::uintptr_t out,
                           std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c) {
    std::vector<const float*> g(grads.size());
    for (std::size_t k = 0; k < grads.size(); ++k) g[k] = ptr<const float>(grads[k]);
    py::gil_scoped_release nogil;
    grid_scatter(g.data(), h0.data(), w0.data(), static_cast<std::int64_t>(g.size()), sh, sw, ptr<float>(out), n, h,
                 w, c);
  }, "gradient of non-overlapping strided grids of a channels-last tensor (0 + g on each grid, 0 elsewhere)");
}

// The layout kernels of 1-bit training (max pooling, the gradient of stride-2 grids), bound into
// the `_fused` module beside the element-wise passes of fused.cc.
#pragma once

#include <pybind11/pybind11.h>

void bind_layout(pybind11::module_& m);

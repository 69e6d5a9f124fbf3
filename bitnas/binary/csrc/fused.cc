// Fused element-wise passes of 1-bit training (pybind11, raw buffers): one pass where torch takes
// three to five. Every kernel computes the same IEEE float operations, in the same order, as the
// torch expression it replaces (compiled with -ffp-contract=off, so no FMA contraction): results
// are bitwise those of the torch path. Buffers are dense and share one memory layout (the caller
// checks); the GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>

namespace py = pybind11;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define BITNAS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BITNAS_CLONES
#endif

namespace {

template <class T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

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
}

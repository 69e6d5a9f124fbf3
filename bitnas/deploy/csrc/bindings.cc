// Python bindings (pybind11): plain numpy buffers in and out, the GIL released while kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "driver.h"

namespace py = pybind11;
using namespace bitnas;

namespace {

// A row of the ISA table by name ("auto": the best this machine supports).
int isa_arg(const std::string& name) {
  if (name == "auto") return best_isa();
  const int isa = find_isa(name);
  if (isa < 0) {
    std::string names = "auto";
    for (int i = 0; i < isa_count(); ++i) names += std::string(", ") + isa_row(i).name;
    throw std::invalid_argument("isa must be one of " + names + ", got '" + name + "'");
  }
  if (!isa_compiled(isa)) throw std::invalid_argument("isa " + name + ": not compiled for this architecture");
  if (!isa_supported(isa)) throw std::invalid_argument("isa " + name + ": this CPU lacks " + isa_missing(isa));
  return isa;
}

// An NHWC array of dtype T whose channels are contiguous and whose pixels are equally spaced
// (a channel slice of a larger NHWC buffer qualifies); returns its base pointer and pixel stride.
template <class T>
T* nhwc(const py::array& a, const char* what, std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c,
        std::int64_t* ld, bool writable) {
  if (!py::dtype::of<T>().is(a.dtype())) throw std::invalid_argument(std::string(what) + ": wrong dtype");
  if (a.ndim() != 4 || a.shape(0) != n || a.shape(1) != h || a.shape(2) != w || a.shape(3) != c)
    throw std::invalid_argument(std::string(what) + ": expected shape (" + std::to_string(n) + ", " + std::to_string(h) +
                                ", " + std::to_string(w) + ", " + std::to_string(c) + ")");
  const std::int64_t sz = sizeof(T);
  if (writable && !a.writeable()) throw std::invalid_argument(std::string(what) + ": array is read-only");
  if (c > 1 && a.strides(3) != sz) throw std::invalid_argument(std::string(what) + ": channels must be contiguous");
  // The pixel stride, read from every dimension longer than 1 (they must agree).
  std::int64_t px = -1;
  bool ok = true;
  auto take = [&](std::int64_t stride, std::int64_t pixels) {
    if (stride % (pixels * sz)) ok = false;
    const std::int64_t v = stride / (pixels * sz);
    if (px >= 0 && v != px) ok = false;
    px = v;
  };
  if (w > 1) take(a.strides(2), 1);
  if (h > 1) take(a.strides(1), w);
  if (n > 1) take(a.strides(0), h * w);
  if (px < 0) px = c;
  if (!ok || px < c) throw std::invalid_argument(std::string(what) + ": pixels must be equally spaced (NHWC)");
  *ld = px;
  return static_cast<T*>(const_cast<void*>(a.data()));
}

std::vector<float> floats(const py::object& o, std::size_t n, const char* what) {
  if (o.is_none()) return {};
  auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(o);
  if (!a || std::size_t(a.size()) != n) throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(n) + " values");
  return std::vector<float>(a.data(), a.data() + n);
}

std::vector<std::int32_t> ints(const py::object& o, std::size_t n, const char* what) {
  if (o.is_none()) return {};
  auto a = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>::ensure(o);
  if (!a || std::size_t(a.size()) != n) throw std::invalid_argument(std::string(what) + ": expected " + std::to_string(n) + " values");
  return std::vector<std::int32_t>(a.data(), a.data() + n);
}

struct PyConv {
  BinaryConv conv;
  int cout, cin;

  void set_transform(const py::object& mul, const py::object& add, int act, const py::object& slope,
                     const py::object& shift_in, const py::object& shift_out, const py::object& bits_scale,
                     const py::object& bits_shift, const py::object& thr_sign, const py::object& thr) {
    const std::size_t n = std::size_t(cout);
    Transform t;
    t.mul = floats(mul, n, "mul");
    t.add = floats(add, n, "add");
    if (t.mul.empty()) t.mul.assign(n, 1.0f);
    if (t.add.empty()) t.add.assign(n, 0.0f);
    if (act < kActNone || act > kActRprelu) throw std::invalid_argument("act must be 0..3");
    t.act = act;
    t.slope = floats(slope, n, "slope");
    t.shift_in = floats(shift_in, n, "shift_in");
    t.shift_out = floats(shift_out, n, "shift_out");
    if ((act == kActPrelu || act == kActRprelu) && t.slope.empty()) throw std::invalid_argument("PReLU needs slope");
    if (act == kActRprelu && (t.shift_in.empty() || t.shift_out.empty())) throw std::invalid_argument("RPReLU needs shifts");
    t.bits_scale = floats(bits_scale, n, "bits_scale");
    t.bits_shift = floats(bits_shift, n, "bits_shift");
    t.thr_sign = ints(thr_sign, n, "thr_sign");
    t.thr = ints(thr, n, "thr");
    if (t.thr_sign.empty() != t.thr.empty()) throw std::invalid_argument("thr_sign and thr go together");
    conv.set_transform(std::move(t));
  }

  void run(const py::array& bits, int oh, int ow, const py::object& out, const py::object& out_bits,
           const py::object& out_ints, const py::object& res, const py::object& post, bool threshold,
           const std::string& isa_name_, int threads) {
    const int isa = isa_arg(isa_name_);
    if (oh < 1 || ow < 1) throw std::invalid_argument("output size must be positive");
    if (bits.ndim() != 4) throw std::invalid_argument("bits: expected (N, H, W, words)");
    const std::int64_t n = bits.shape(0), h = bits.shape(1), w = bits.shape(2);
    std::int64_t ld;
    const word_t* in = nhwc<word_t>(bits, "bits", n, h, w, words_for(cin), &ld, false);
    if (ld != words_for(cin)) throw std::invalid_argument("bits: must be contiguous");
    EpiIO io;
    io.threshold = threshold;
    if (!out.is_none()) io.out = nhwc<float>(out.cast<py::array>(), "out", n, oh, ow, cout, &io.out_ld, true);
    if (!out_bits.is_none()) {
      std::int64_t bld;
      io.bits = nhwc<word_t>(out_bits.cast<py::array>(), "out_bits", n, oh, ow, words_for(cout), &bld, true);
      if (bld != words_for(cout)) throw std::invalid_argument("out_bits: must be contiguous");
    }
    if (!out_ints.is_none()) io.ints = nhwc<std::int32_t>(out_ints.cast<py::array>(), "out_ints", n, oh, ow, cout, &io.ints_ld, true);
    if (!res.is_none()) io.res = nhwc<float>(res.cast<py::array>(), "res", n, oh, ow, cout, &io.res_ld, false);
    if (!post.is_none()) io.post = nhwc<float>(post.cast<py::array>(), "post", n, oh, ow, cout, &io.post_ld, false);
    const Transform& t = conv.transform();
    if (threshold && (t.thr.empty() || io.out || io.res || io.post))
      throw std::invalid_argument("threshold mode needs thresholds and writes bits (or ints) only");
    py::gil_scoped_release nogil;
    conv.run(in, int(n), int(h), int(w), oh, ow, io, isa, threads, isa_name_ == "auto");
  }
};

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "bitnas 1-bit inference kernels (XNOR-popcount convolution, bit-packing, fused output transform)";
  m.def("cpu_features", [] {
    py::dict d;
    for (const auto& f : cpu_features()) d[py::str(f.first)] = f.second;
    return d;
  }, "CPU features from cpuid and XGETBV (os_*: the OS saves that register state; amx_granted: Linux "
     "granted this process the AMX tile data)");
  m.def("isas", [] {
    py::list rows;
    for (int i = 0; i < isa_count(); ++i) {
      const IsaRow& r = isa_row(i);
      py::dict d;
      d["name"] = r.name;
      py::list feats;
      std::string f = r.features;
      for (std::size_t a = 0; a < f.size();) {
        std::size_t b = f.find(',', a);
        if (b == std::string::npos) b = f.size();
        feats.append(f.substr(a, b - a));
        a = b + 1;
      }
      d["features"] = feats;
      d["compiled"] = isa_compiled(i);
      d["supported"] = isa_supported(i);
      d["missing"] = isa_missing(i);
      d["tile_bytes"] = r.layout.tile_bytes;
      d["tile_max"] = r.layout.tile_max;
      d["word_bytes"] = r.layout.word_bytes;
      d["channel_pad"] = r.layout.channel_pad;
      d["rival"] = r.rival ? py::object(py::str(r.rival)) : py::object(py::none());
      rows.append(d);
    }
    return rows;
  }, "The ISA table, plain to fastest: name, required features, compiled, supported here, layout sizes");
  m.def("isa_supported", [](const std::string& name) {
    const int i = find_isa(name);
    return i >= 0 && isa_supported(i);
  });
  m.def("best_isa", [] { return std::string(isa_row(best_isa()).name); });
  m.def(
      "pack",
      [](const py::array& x, const py::array& out, const py::object& scale, const py::object& shift,
         const std::string& isa, int threads) {
        if (x.ndim() != 4) throw std::invalid_argument("x: expected (N, H, W, C)");
        const std::int64_t n = x.shape(0), h = x.shape(1), w = x.shape(2), c = x.shape(3);
        std::int64_t ld, old;
        const float* xp = nhwc<float>(x, "x", n, h, w, c, &ld, false);
        word_t* op = nhwc<word_t>(out, "out", n, h, w, words_for(int(c)), &old, true);
        if (old != words_for(int(c))) throw std::invalid_argument("out: must be contiguous");
        const std::vector<float> s = floats(scale, std::size_t(c), "scale"), t = floats(shift, std::size_t(c), "shift");
        const int i = isa_arg(isa);
        py::gil_scoped_release nogil;
        bitnas::pack(xp, n * h * w, int(c), ld, s.empty() ? nullptr : s.data(), t.empty() ? nullptr : t.data(), op, i,
                     threads);
      },
      py::arg("x"), py::arg("out"), py::arg("scale") = py::none(), py::arg("shift") = py::none(),
      py::arg("isa") = "auto", py::arg("threads") = 1);
  py::class_<PyConv>(m, "BinaryConv")
      .def(py::init([](const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& neg, int cin,
                       int groups, int sh, int sw, int pt, int pl, int dh, int dw, bool pad_one) {
             if (neg.ndim() != 4) throw std::invalid_argument("weights: expected (C_out, C_in/groups, KH, KW)");
             const int cout = int(neg.shape(0)), kh = int(neg.shape(2)), kw = int(neg.shape(3));
             if (groups < 1 || cin % groups || cout % groups || neg.shape(1) != cin / groups)
               throw std::invalid_argument("weights: channels do not match groups");
             if (cout < 1 || kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1)
               throw std::invalid_argument("sizes, strides and dilations must be positive");
             return new PyConv{BinaryConv(neg.data(), cout, cin, groups, kh, kw, sh, sw, dh, dw, pt, pl, pad_one),
                               cout, cin};
           }),
           py::arg("neg"), py::arg("in_channels"), py::arg("groups"), py::arg("stride_h"), py::arg("stride_w"),
           py::arg("pad_top"), py::arg("pad_left"), py::arg("dilation_h"), py::arg("dilation_w"), py::arg("pad_one"))
      .def_readonly("out_channels", &PyConv::cout)
      .def_readonly("in_channels", &PyConv::cin)
      .def_property_readonly("depthwise", [](const PyConv& c) { return c.conv.depthwise(); })
      .def_property_readonly("last_isa", [](const PyConv& c) -> py::object {
        const int row = c.conv.last_row();
        if (row < 0) return py::none();
        return py::str(isa_row(row).name);
      }, "The ISA row whose kernels ran the last call (None before any)")
      .def("set_transform", &PyConv::set_transform, py::arg("mul") = py::none(), py::arg("add") = py::none(),
           py::arg("act") = 0, py::arg("slope") = py::none(), py::arg("shift_in") = py::none(),
           py::arg("shift_out") = py::none(), py::arg("bits_scale") = py::none(), py::arg("bits_shift") = py::none(),
           py::arg("thr_sign") = py::none(), py::arg("thr") = py::none())
      .def("run", &PyConv::run, py::arg("bits"), py::arg("oh"), py::arg("ow"), py::arg("out") = py::none(),
           py::arg("out_bits") = py::none(), py::arg("out_ints") = py::none(), py::arg("res") = py::none(),
           py::arg("post") = py::none(), py::arg("threshold") = false, py::arg("isa") = "auto",
           py::arg("threads") = 1);
}

// Driver: a small thread pool, and BinaryConv (weights laid out per ISA row on first use, tiling
// sized by the row's layout, groups, the depthwise path and the output transform).
#include "driver.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace bitnas {

static const Kernels* kernels_for(int isa) {
  if (isa < 0 || isa >= isa_count()) throw std::runtime_error("no such ISA row");
  if (!isa_supported(isa))
    throw std::runtime_error(std::string("the ") + isa_row(isa).name + " kernels need " + isa_missing(isa) +
                             ", which this CPU (or build) lacks");
  return isa_row(isa).kernels();
}

// ------------------------------------------------------------------ thread pool

namespace {

class Pool {
 public:
  void run(int threads, std::int64_t ntasks, const std::function<void(std::int64_t, int)>& fn) {
    std::lock_guard<std::mutex> serial(run_mutex_);
    const int helpers = threads - 1;
    {
      std::unique_lock<std::mutex> lk(m_);
      while (int(workers_.size()) < helpers) {
        const int id = int(workers_.size()) + 1;
        workers_.emplace_back([this, id] { loop(id); });
      }
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0);
      participants_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
  }

 private:
  void work(int id) {
    for (std::int64_t t = next_.fetch_add(1); t < ntasks_; t = next_.fetch_add(1)) (*fn_)(t, id);
  }
  void loop(int id) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (id > participants_) continue;
      }
      work(id);
      std::lock_guard<std::mutex> lk(m_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex run_mutex_, m_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(std::int64_t, int)>* fn_ = nullptr;
  std::int64_t ntasks_ = 0;
  std::atomic<std::int64_t> next_{0};
  int participants_ = 0, pending_ = 0;
  std::uint64_t generation_ = 0;
};

// One pool per process; a forked child (whose copy has no threads) makes its own. Never
// destroyed: its idle workers end with the process.
Pool& pool() {
  static std::mutex m;
  static Pool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(m);
  if (!p || owner != getpid()) {
    p = new Pool();
    owner = getpid();
  }
  return *p;
}

}  // namespace

void parallel_for(int threads, std::int64_t ntasks, const std::function<void(std::int64_t, int)>& fn) {
  threads = int(std::min<std::int64_t>(std::max(threads, 1), ntasks));
  if (threads <= 1) {
    for (std::int64_t t = 0; t < ntasks; ++t) fn(t, 0);
    return;
  }
  pool().run(threads, ntasks, fn);
}

// ------------------------------------------------------------------ packing

void pack(const float* x, std::int64_t npix, int c, std::int64_t ld, const float* scale, const float* shift,
          word_t* out, int isa, int threads) {
  auto fn = kernels_for(isa)->pack;
  const std::int64_t chunk = std::max<std::int64_t>(1, 16384 / std::max(c, 1));
  const std::int64_t tasks = (npix + chunk - 1) / chunk;
  const int nw = words_for(c);
  parallel_for(threads, tasks, [&](std::int64_t t, int) {
    const std::int64_t p0 = t * chunk, p1 = std::min(npix, p0 + chunk);
    fn(x + p0 * ld, p1 - p0, c, ld, scale, shift, out + p0 * nw);
  });
}

// ------------------------------------------------------------------ BinaryConv

namespace {

// The framed input of a dense_fused call (engine.h): the input itself when every tap of every
// output pixel lies inside it, else a copy with the border in zero words, in a buffer each
// calling thread keeps between calls (no allocation once it has grown).
Framed frame(const word_t* in, const Geom& g) {
  const int fh = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1, fw = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  if (g.pt == 0 && g.pl == 0 && fh <= g.h && fw <= g.w) return Framed{in, g.h, g.w};
  thread_local std::vector<word_t> buf;
  const std::size_t nw = std::size_t(g.in_words), row = std::size_t(fw) * nw;
  buf.resize(std::size_t(g.n) * fh * row);
  const int c_lo = std::min(g.pl, fw), c_hi = std::max(c_lo, std::min(fw, g.pl + g.w));  // framed columns inside
  for (int n = 0; n < g.n; ++n)
    for (int r = 0; r < fh; ++r) {
      word_t* dst = buf.data() + (std::size_t(n) * fh + r) * row;
      const int iy = r - g.pt;
      if (iy < 0 || iy >= g.h) {
        std::memset(dst, 0, row * sizeof(word_t));
        continue;
      }
      std::memset(dst, 0, std::size_t(c_lo) * nw * sizeof(word_t));
      std::memcpy(dst + std::size_t(c_lo) * nw, in + ((std::size_t(n) * g.h + iy) * g.w + (c_lo - g.pl)) * nw,
                  std::size_t(c_hi - c_lo) * nw * sizeof(word_t));
      std::memset(dst + std::size_t(c_hi) * nw, 0, std::size_t(fw - c_hi) * nw * sizeof(word_t));
    }
  return Framed{buf.data(), fh, fw};
}

}  // namespace

EpiParams Transform::params() const {
  auto ptr = [](const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); };
  EpiParams p;
  p.mul = ptr(mul);
  p.add = ptr(add);
  p.act = act;
  p.slope = ptr(slope);
  p.shift_in = ptr(shift_in);
  p.shift_out = ptr(shift_out);
  p.bits_scale = ptr(bits_scale);
  p.bits_shift = ptr(bits_shift);
  p.thr_sign = thr_sign.empty() ? nullptr : thr_sign.data();
  p.thr = thr.empty() ? nullptr : thr.data();
  return p;
}

BinaryConv::BinaryConv(const std::uint8_t* neg, int cout, int cin, int groups, int kh, int kw, int sh, int sw,
                       int dh, int dw, int pt, int pl, bool pad_one) {
  Geom& g = base_;
  g.cin = cin;
  g.cout = cout;
  g.groups = groups;
  g.kh = kh; g.kw = kw; g.sh = sh; g.sw = sw; g.dh = dh; g.dw = dw; g.pt = pt; g.pl = pl;
  g.pad_one = pad_one;
  const int cin_g = g.cin_g(), taps = g.taps(), gw = g.g_words();
  canon_.assign(std::size_t(cout) * taps * gw, 0);
  wsum_.assign(std::size_t(taps) * cout, 0);
  neg_.assign(neg, neg + std::size_t(cout) * cin_g * taps);
  for (int o = 0; o < cout; ++o)
    for (int c = 0; c < cin_g; ++c)
      for (int t = 0; t < taps; ++t) {
        const bool b = neg[(std::size_t(o) * cin_g + c) * taps + t] != 0;
        if (b) canon_[(std::size_t(o) * taps + t) * gw + (c >> 6)] |= word_t(1) << (c & 63);
        wsum_[std::size_t(t) * cout + o] += b ? -1 : 1;
      }
  rows_.resize(std::size_t(isa_count()));
  depthwise_ = groups == cin && cout == cin && taps <= 127;
}

BinaryConv::BinaryConv(const BinaryConv& other)
    : base_(other.base_), canon_(other.canon_), wsum_(other.wsum_), neg_(other.neg_),
      depthwise_(other.depthwise_), rows_(other.rows_.size()), transform_(other.transform_) {}

void BinaryConv::prepare(int isa) const {
  std::lock_guard<std::mutex> lk(prepare_mutex_);
  RowWeights& r = rows_[std::size_t(isa)];
  if (r.ready) return;
  const Kernels* k = kernels_for(isa);
  const Geom& g = base_;
  const int taps = g.taps(), gw = g.g_words();
  r.group_stride = k->prepare_dense(nullptr, g, nullptr);
  r.dense.assign(std::size_t(r.group_stride) * g.groups, 0);
  for (int grp = 0; grp < g.groups; ++grp)
    k->prepare_dense(canon_.data() + std::size_t(grp) * g.cout_g() * taps * gw, g,
                     r.dense.data() + std::size_t(grp) * r.group_stride);
  if (depthwise_ && k->depthwise) {
    const int cpad = isa_row(isa).layout.channel_pad, cp = (g.cin + cpad - 1) / cpad * cpad;
    r.dw.assign(std::size_t(taps) * cp, 0);
    for (int c = 0; c < g.cin; ++c)
      for (int t = 0; t < taps; ++t) r.dw[std::size_t(t) * cp + c] = neg_[std::size_t(c) * taps + t] ? -1 : 1;
  }
  r.ready = true;
}

Geom BinaryConv::geom(int n, int h, int w, int oh, int ow) const {
  Geom g = base_;
  g.n = n; g.h = h; g.w = w; g.oh = oh; g.ow = ow;
  g.in_words = words_for(g.cin);
  return g;
}

void BinaryConv::run(const word_t* in, int n, int h, int w, int oh, int ow, const EpiIO& io, int isa,
                     int threads, bool pick) const {
  const Geom g = geom(n, h, w, oh, ow);
  if (g.out_pixels() == 0) return;
  const Kernels* k = kernels_for(isa);
  prepare(isa);
  if (depthwise_ && k->depthwise) {  // a row with a rival runs the rival's depthwise kernels
    const char* rival = isa_row(isa).rival;
    last_row_.store(rival ? find_isa(rival) : isa);
    return run_depthwise(in, g, io, isa, threads);
  }
  const int row = pick ? pick_row(in, g, isa, threads) : isa;
  last_row_.store(row);
  run_dense(in, g, io, row, threads);
}

int BinaryConv::pick_row(const word_t* in, const Geom& g, int isa, int threads) const {
  const char* rival_name = isa_row(isa).rival;
  const int rival = rival_name ? find_isa(rival_name) : -1;
  if (rival < 0 || !isa_supported(rival)) return isa;
  const std::array<int, 6> key = {g.n, g.h, g.w, g.oh, g.ow, threads};
  std::lock_guard<std::mutex> lk(choice_mutex_);  // one timing per shape, even with callers in parallel
  const auto found = choices_.find(key);
  if (found != choices_.end()) return found->second;
  prepare(rival);
  // The dense cores alone (an empty output transform), alternating, three rounds; the faster
  // minimum wins. The first round also warms each row's weights into the caches.
  const EpiIO none;
  double best[2] = {1e300, 1e300};
  const int rows[2] = {isa, rival};
  for (int round = 0; round < 3; ++round)
    for (int j = 0; j < 2; ++j) {
      const int which = round % 2 ? 1 - j : j;
      const auto t0 = std::chrono::steady_clock::now();
      run_dense(in, g, none, rows[which], threads);
      best[which] = std::min(best[which], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  // The row beats its rival only by a clear margin: timings on a shared core scatter by ~10 %, and
  // at equal speed the rival (the popcount kernels) needs less scratch memory.
  constexpr double kMargin = 0.9;
  const int row = best[0] < kMargin * best[1] ? isa : rival;
  choices_.emplace(key, row);
  return row;
}

const BinaryConv::BorderFix& BinaryConv::border_fix(const Geom& g) const {
  std::lock_guard<std::mutex> lk(fix_mutex_);
  const std::array<int, 4> key = {g.h, g.w, g.oh, g.ow};
  const auto found = fixes_.find(key);
  if (found != fixes_.end()) return found->second;
  BorderFix& f = fixes_[key];
  f.fix.assign(std::size_t(g.oh) * g.ow, -1);
  for (int oy = 0; oy < g.oh; ++oy)
    for (int ox = 0; ox < g.ow; ++ox) {
      const int iy0 = oy * g.sh - g.pt, ix0 = ox * g.sw - g.pl;
      std::size_t row = 0;
      bool any = false;
      for (int ky = 0; ky < g.kh; ++ky)
        for (int kx = 0; kx < g.kw; ++kx) {
          const int iy = iy0 + ky * g.dh, ix = ix0 + kx * g.dw;
          if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) continue;
          if (!any) {
            any = true;
            row = f.rows.size();
            f.fix[std::size_t(oy) * g.ow + ox] = int(row / g.cout);
            f.rows.resize(row + std::size_t(g.cout), 0);
          }
          const std::int32_t* ws = wsum_.data() + std::size_t(ky * g.kw + kx) * g.cout;
          for (int o = 0; o < g.cout; ++o) f.rows[row + o] += ws[o];
        }
    }
  return f;
}

void BinaryConv::run_dense(const word_t* in, const Geom& g, const EpiIO& io, int isa, int threads) const {
  const Kernels* k = isa_row(isa).kernels();
  const Layout& lay = isa_row(isa).layout;
  const RowWeights& r = rows_[std::size_t(isa)];
  const std::int64_t kwords = std::int64_t(g.taps()) * g.g_words();
  const std::int64_t npix = g.out_pixels();
  // A tile's gathered activations stay within the row's L1 budget; with several threads, tiles
  // small enough that every thread gets one.
  std::int64_t tile = std::max<std::int64_t>(8, std::min<std::int64_t>(lay.tile_max, lay.tile_bytes / (lay.word_bytes * kwords)));
  if (threads > 1) tile = std::min(tile, std::max<std::int64_t>(8, (npix + threads - 1) / threads));
  const std::int64_t tiles = (npix + tile - 1) / tile;
  const std::int64_t dot_ld = (g.cout + 15) / 16 * 16;
  const std::int64_t scratch_bytes = k->dense_scratch(g, int(tile));
  const int nthreads = int(std::min<std::int64_t>(std::max(threads, 1), tiles));
  std::vector<std::vector<std::int64_t>> scratch(nthreads);  // 8-byte aligned storage
  std::vector<std::vector<std::int32_t>> dots(nthreads);
  const EpiParams params = transform_.params();
  if (k->dense_fused && g.groups == 1 && g.pt >= 0 && g.pl >= 0) {
    Framed src = frame(in, g);
    if (!g.pad_one && src.img != in) {  // the input itself: every tap inside
      const BorderFix& f = border_fix(g);
      if (!f.rows.empty()) {
        src.fix = f.fix.data();
        src.fix_rows = f.rows.data();
      }
    }
    parallel_for(nthreads, tiles, [&](std::int64_t t, int id) {
      if (scratch[id].empty()) scratch[id].resize(std::size_t(scratch_bytes / 8 + 8));
      const std::int64_t p0 = t * tile, p1 = std::min(npix, p0 + tile);
      k->dense_fused(src, g, r.dense.data(), p0, p1, params, io, scratch[id].data());
    });
    return;
  }
  parallel_for(nthreads, tiles, [&](std::int64_t t, int id) {
    if (dots[id].empty()) {
      scratch[id].resize(std::size_t(scratch_bytes / 8 + 8));
      dots[id].resize(std::size_t(tile * dot_ld));
    }
    const std::int64_t p0 = t * tile, p1 = std::min(npix, p0 + tile);
    for (int grp = 0; grp < g.groups; ++grp)
      k->dense(in, g, grp, r.dense.data() + std::size_t(grp) * r.group_stride, wsum_.data(), p0, p1,
               dots[id].data(), dot_ld, scratch[id].data());
    k->epilogue(dots[id].data(), dot_ld, int(p1 - p0), p0, g.cout, params, io);
  });
}

void BinaryConv::run_depthwise(const word_t* in, const Geom& g, const EpiIO& io, int isa, int threads) const {
  const Kernels* k = isa_row(isa).kernels();
  const int pad_to = isa_row(isa).layout.channel_pad;
  const std::int8_t* wts = rows_[std::size_t(isa)].dw.data();
  // Work unit: a band of output rows of one image. Its input rows (with the border, in the padding
  // value) are expanded to sign bytes once, then every output pixel reads its taps from there.
  const int band = std::max(1, std::min(g.oh, 256 / std::max(g.ow, 1)));
  const int bands = (g.oh + band - 1) / band;
  const std::int64_t units = std::int64_t(g.n) * bands;
  const int row_span = (band - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  const int col0 = -g.pl, img_w = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  const int cpad = (g.cin + pad_to - 1) / pad_to * pad_to, nw = g.in_words;
  const std::int8_t pad = g.pad_one ? 1 : 0;
  const int nthreads = int(std::min<std::int64_t>(std::max(threads, 1), units));
  std::vector<std::vector<std::int8_t>> imgs(nthreads);
  std::vector<std::vector<std::int32_t>> dots(nthreads);
  const EpiParams params = transform_.params();
  parallel_for(nthreads, units, [&](std::int64_t u, int id) {
    if (imgs[id].empty()) {
      imgs[id].resize(std::size_t(row_span) * img_w * cpad + 64);
      dots[id].resize(std::size_t(band) * g.ow * cpad);
    }
    const int n = int(u / bands), oy0 = int(u % bands) * band, oy1 = std::min(g.oh, oy0 + band);
    const int row0 = oy0 * g.sh - g.pt, rows = (oy1 - 1 - oy0) * g.sh + (g.kh - 1) * g.dh + 1;
    std::int8_t* img = imgs[id].data();
    // Image columns [0, img_w) are input columns col0 + c; those inside [0, w) are expanded.
    const int c_lo = std::min(std::max(0, -col0), img_w), c_hi = std::max(c_lo, std::min(img_w, g.w - col0));
    for (int r = 0; r < rows; ++r) {
      const int iy = row0 + r;
      std::int8_t* dst = img + std::size_t(r) * img_w * cpad;
      if (iy < 0 || iy >= g.h) {
        std::memset(dst, pad, std::size_t(img_w) * cpad);
        continue;
      }
      std::memset(dst, pad, std::size_t(c_lo) * cpad);
      std::memset(dst + std::size_t(c_hi) * cpad, pad, std::size_t(img_w - c_hi) * cpad);
      if (c_hi > c_lo)
        k->expand(in + ((std::int64_t(n) * g.h + iy) * g.w + col0 + c_lo) * nw, c_hi - c_lo, nw, cpad,
                  dst + std::size_t(c_lo) * cpad);
    }
    k->depthwise(img, rows, img_w, cpad, row0, col0, wts, g, oy0, oy1, dots[id].data(), cpad);
    const std::int64_t pix0 = (std::int64_t(n) * g.oh + oy0) * g.ow;
    k->epilogue(dots[id].data(), cpad, (oy1 - oy0) * g.ow, pix0, g.cout, params, io);
  });
}

}  // namespace bitnas
